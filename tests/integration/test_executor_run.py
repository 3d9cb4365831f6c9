"""The executor against real PostgreSQL, NATS and Docker, with busybox task images.

The scheduler and the storage service are built in parallel: the tests create runs through the
run log and publish the jobs themselves, and a **storage stand-in** (an aiohttp server in this
file, not production code) serves ``inputs.tar`` and takes ``outputs.tar`` with storage's
contract (it appends CollectOutputs, or FailRun(OUTPUTS_INVALID), through the run log).
"""

from __future__ import annotations

import datetime as dt
import io
import pathlib
import subprocess
import tarfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.executor.app import build_app
from services.executor.consumers import DURABLE
from services.executor.runtime import LABEL_EXECUTOR, LABEL_RUN
from services.executor.settings import ExecutorSettings
from shared import layout
from shared.blobstore import LocalBlobStore
from shared.contracts import LogLine, RunJob, Subjects
from shared.domain.decide import (
    CancelRun,
    CollectOutputs,
    CreateRun,
    FailRun,
    MarkQueued,
    ProvisionInput,
    RequestRun,
)
from shared.domain.errors import DomainError
from shared.domain.events import FailureCode, FailureStage, OutputRecord, RunStatus
from shared.domain.state import RunState
from shared.domain.task_events import TaskParameter, TaskRegistered, TaskResources
from shared.runlog.runs import RunLog
from shared.runlog.store import EventStore, NewEvent
from shared.settings import load_settings
from tests.descriptors import descriptor as make_descriptor
from tests.descriptors import params
from tests.images import build_image, require_docker, save_image
from tests.support import eventually

pytestmark = [pytest.mark.docker, pytest.mark.slow]

Client = TestClient[web.Request, web.Application]

ADD_CMD = "echo $(( $(cat /inputs/a) + $(cat /inputs/b) )) > /outputs/sum"
# the generic task: runs the shell script given as its `script` input, writes `out`
SCRIPT_CMD = "sh /inputs/script"


@dataclass(frozen=True)
class Image:
    tag: str
    image_id: str
    tar: pathlib.Path


def _image(tag: str, cmd: str, work: pathlib.Path) -> Image:
    build_image(tag, work, cmd)
    image_id = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", tag], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Image(tag, image_id, save_image(tag, work / f"{tag.replace('/', '_').replace(':', '_')}.tar"))


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Image]:
    require_docker()
    work = tmp_path_factory.mktemp("executor-images")
    return {
        "add": _image("appengine-test/executor-add:1", ADD_CMD, work),
        "script": _image("appengine-test/executor-script:1", SCRIPT_CMD, work),
    }


# --- the storage stand-in -------------------------------------------------------------------------


@dataclass
class StorageStandIn:
    """Implements storage's two internal endpoints for the tests (NOT production code)."""

    runlog: RunLog
    inputs: dict[uuid.UUID, dict[str, bytes]] = field(default_factory=dict)
    outputs_declared: dict[uuid.UUID, tuple[str, ...]] = field(default_factory=dict)
    received: dict[uuid.UUID, dict[str, bytes]] = field(default_factory=dict)
    fail_outputs: int = 0  # answer 503 this many times first

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/internal/runs/{run_id}/inputs.tar", self.get_inputs)
        app.router.add_put("/internal/runs/{run_id}/outputs.tar", self.put_outputs)
        return app

    async def get_inputs(self, request: web.Request) -> web.StreamResponse:
        run_id = uuid.UUID(request.match_info["run_id"])
        folder = request.query["folder"].strip("/")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for made in (folder, request.query["mkdir"].strip("/")):
                info = tarfile.TarInfo(made)
                info.type = tarfile.DIRTYPE
                info.mode = 0o777
                tar.addfile(info)
            for name, data in self.inputs.get(run_id, {}).items():
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
        return web.Response(body=buf.getvalue(), content_type="application/x-tar")

    async def put_outputs(self, request: web.Request) -> web.StreamResponse:
        run_id = uuid.UUID(request.match_info["run_id"])
        if self.fail_outputs > 0:
            self.fail_outputs -= 1
            return web.Response(status=503, text="storage stand-in: try again")
        assert request.query["exit_code"] == "0"
        files: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(await request.read()), mode="r") as tar:
            for member in tar.getmembers():
                top, _, rest = member.name.partition("/")
                assert top == "outputs", member.name
                extracted = tar.extractfile(member) if member.isfile() else None
                if extracted is not None and rest:
                    files[rest] = extracted.read()
        self.received[run_id] = files
        missing = [o for o in self.outputs_declared.get(run_id, ()) if o not in files]
        command: CollectOutputs | FailRun
        if missing:
            command = FailRun(
                code=FailureCode.OUTPUTS_INVALID, message=f"missing {missing}", stage=FailureStage.COLLECT
            )
        else:
            records = tuple(OutputRecord(parameter=o, size=len(files[o])) for o in self.outputs_declared[run_id])
            command = CollectOutputs(outputs=records)
        try:
            state, _ = await self.runlog.execute(run_id, command)
        except DomainError:
            state = await self.runlog.load(run_id)
        return web.json_response({"state": str(state.status)})


# --- harness ----------------------------------------------------------------------------------------


@dataclass
class Harness:
    runlog: RunLog
    store: EventStore
    blobs: LocalBlobStore
    js: JetStreamContext
    nc: NATS
    subjects: Subjects
    storage: StorageStandIn
    env: dict[str, str]
    executor_id: str

    async def task(
        self,
        image: Image,
        *,
        inputs: tuple[str, ...],
        outputs: tuple[str, ...],
        resources: TaskResources | None = None,
    ) -> uuid.UUID:
        """Register a task as the registry would: image and descriptor blobs, ``task.registered``."""
        task_id = uuid.uuid4()
        short = f"t{task_id.hex[:8]}"
        descriptor = make_descriptor(
            f"org.test.{short}",
            short,
            inputs=params((n, "string") for n in inputs),
            outputs=params((n, "string") for n in outputs),
        )
        await self.blobs.put_file(layout.task_image(task_id), image.tar)
        await self.blobs.put_stream(layout.task_descriptor(task_id), _chunks(descriptor))
        now = dt.datetime.now(dt.UTC)
        event = TaskRegistered(
            task_id=task_id,
            namespace=f"org.test.{short}",
            version="1.0.0",
            name=short,
            image_name=image.tag,
            image_id=image.image_id,
            image_size=image.tar.stat().st_size,
            image_key=layout.task_image(task_id),
            resources=resources or TaskResources(cpus=1, ram_bytes=256 * 1024**2),
            input_folder="/inputs",
            output_folder="/outputs",
            inputs=tuple(TaskParameter(name=n, type="string") for n in inputs),
            outputs=tuple(TaskParameter(name=n, type="string") for n in outputs),
            at=now,
        )
        record = NewEvent(
            id=uuid.uuid4(), type="registered", occurred_at=now, state="REGISTERED", payload=msgspec.json.encode(event)
        )
        await self.store.append("task", task_id, 0, [record])
        return task_id

    async def run(
        self,
        task_id: uuid.UUID,
        inputs: dict[str, bytes],
        outputs: tuple[str, ...],
        *,
        time_limit: float | None = None,
        publish: bool = True,
    ) -> RunJob:
        """Create, provision and queue a run (as the scheduler and storage would), publish its job."""
        run_id = uuid.uuid4()
        names = tuple(inputs)
        await self.runlog.execute(
            run_id,
            CreateRun(
                task_id=task_id,
                task_namespace="org.test",
                task_version="1.0.0",
                required_inputs=names,
                time_limit_seconds=time_limit,
            ),
        )
        for name in names:
            await self.runlog.execute(run_id, ProvisionInput(parameter=name))
        await self.runlog.execute(run_id, RequestRun())
        state, _ = await self.runlog.execute(run_id, MarkQueued())
        self.storage.inputs[run_id] = inputs
        self.storage.outputs_declared[run_id] = outputs
        job = RunJob(run_id=run_id, task_id=task_id, queued_seq=state.version)
        if publish:
            await self.publish(job)
        return job

    async def publish(self, job: RunJob) -> None:
        await self.js.publish(self.subjects.jobs, msgspec.json.encode(job), headers={"Nats-Msg-Id": job.msg_id})

    async def ended(self, run_id: uuid.UUID, within: float = 60) -> RunState:
        async def terminal() -> RunState | None:
            state = await self.runlog.load(run_id)
            return state if state.terminal else None

        state: RunState | None = await eventually(terminal, within=within, interval=0.1, what=f"{run_id} terminal")
        assert state is not None
        return state

    async def reaches(self, run_id: uuid.UUID, status: RunStatus, within: float = 30) -> RunState:
        async def probe() -> RunState | None:
            state = await self.runlog.load(run_id)
            return state if state.status is status else None

        state: RunState | None = await eventually(probe, within=within, interval=0.05, what=f"{run_id} {status}")
        assert state is not None
        return state

    async def states(self, run_id: uuid.UUID) -> list[str | None]:
        return [e.state for e in await self.store.read(run_id)]

    @property
    def label(self) -> str:
        return f"{LABEL_EXECUTOR}={self.executor_id}"

    def executor(self, **overrides: str) -> Callable[[], Awaitable[Client]]:
        env = {**self.env, **overrides}

        async def start() -> Client:
            client = TestClient(TestServer(build_app(load_settings(ExecutorSettings, env))))
            await client.start_server()
            return client

        return start


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def docker(*args: str, check: bool = True) -> str:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True).stdout


def containers(*labels: str, running_only: bool = False) -> list[str]:
    """Ids of the containers carrying all ``labels``."""
    filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
    return docker("ps", "-q", *([] if running_only else ["-a"]), *filters).split()


@pytest.fixture
async def harness(
    images: dict[str, Image],
    runlog: RunLog,
    store: EventStore,
    js: JetStreamContext,
    nc: NATS,
    subjects: Subjects,
    schema: str,
    database_url: str,
    nats_url: str,
    unique: str,
    tmp_path: pathlib.Path,
) -> AsyncIterator[Harness]:
    stand_in = StorageStandIn(runlog)
    server = TestServer(stand_in.app())
    await server.start_server()
    data = tmp_path / "data"
    executor_id = f"test-{unique}"
    env = {
        "DATABASE_URL": database_url,
        "NATS_URL": nats_url,
        "DATABASE_SCHEMA": schema,
        "NATS_SUBJECT_PREFIX": subjects.prefix,
        "DATA_DIR": str(data),
        "STORAGE_URL": str(server.make_url("")),
        "EXECUTOR_ID": executor_id,
        "STOP_GRACE_SECONDS": "1",
        "WATCH_INTERVAL": "0.5",
        "JOB_ACK_WAIT": "5",
        "SHUTDOWN_TIMEOUT": "5",
    }
    h = Harness(
        runlog=runlog,
        store=store,
        blobs=LocalBlobStore(data / "blobs"),
        js=js,
        nc=nc,
        subjects=subjects,
        storage=stand_in,
        env=env,
        executor_id=executor_id,
    )
    try:
        yield h
    finally:
        await server.close()
        leftover = containers(h.label)
        if leftover:
            docker("rm", "-f", *leftover, check=False)
        assert leftover == [], "the executor left containers behind"


@pytest.fixture
async def executor(harness: Harness) -> AsyncIterator[Client]:
    client = await harness.executor()()
    yield client
    await client.close()


# --- tests ------------------------------------------------------------------------------------------


async def test_adds_two_integers_loading_the_image_from_the_blob_store(
    harness: Harness, images: dict[str, Image]
) -> None:
    image = images["add"]
    # absent from the engine: the executor must load it from the blob store
    docker("rmi", "-f", image.image_id)
    task_id = await harness.task(image, inputs=("a", "b"), outputs=("sum",))
    job = await harness.run(task_id, {"a": b"2", "b": b"3"}, ("sum",), publish=False)
    client = await harness.executor(PRELOAD_IMAGES="false")()
    try:
        await harness.publish(job)
        state = await harness.ended(job.run_id)
        metrics = await (await client.get("/metrics")).text()
    finally:
        await client.close()
    assert state.status is RunStatus.FINISHED, state.failure
    assert harness.storage.received[job.run_id] == {"sum": b"5\n"}
    states = await harness.states(job.run_id)
    assert states[-5:] == ["QUEUED", "PENDING", "RUNNING", "RUNNING", "FINISHED"]
    assert state.executor_id == harness.executor_id and state.attempt == 1
    assert docker("image", "inspect", "--format", "{{.Id}}", image.image_id).strip() == image.image_id
    assert "appengine_executor_image_loads_total 1.0" in metrics
    # the executor's heartbeat, which the scheduler's watchdog reads
    beat = await harness.store.pool.fetchrow(
        f"SELECT slots, last_seen FROM {harness.store.schema}.executor_heartbeats WHERE executor_id = $1",
        harness.executor_id,
    )
    assert beat is not None and beat["slots"] == 2
    assert containers(harness.label) == []


async def test_a_registered_tasks_image_is_loaded_before_its_first_run(
    harness: Harness, executor: Client, images: dict[str, Image]
) -> None:
    image = images["add"]
    docker("rmi", "-f", image.image_id)  # by id: every tag of it goes
    assert docker("image", "inspect", image.image_id, check=False).strip() in ("", "[]")
    await harness.task(image, inputs=("a", "b"), outputs=("sum",))

    async def loaded() -> bool:
        metrics = await (await executor.get("/metrics")).text()
        return "appengine_executor_image_loads_total 1.0" in metrics

    await eventually(loaded, within=60, what="image loaded on task.registered")
    assert docker("image", "inspect", "--format", "{{.Id}}", image.image_id).strip() == image.image_id


async def test_a_nonzero_exit_fails_the_run_with_its_code_and_last_lines(
    harness: Harness, images: dict[str, Image], executor: Client
) -> None:
    task_id = await harness.task(images["script"], inputs=("script",), outputs=("out",))
    script = b"echo starting; echo 'something broke' >&2; exit 3"
    job = await harness.run(task_id, {"script": script}, ("out",))
    state = await harness.ended(job.run_id)
    assert state.status is RunStatus.FAILED
    assert state.failure is not None
    assert state.failure.code is FailureCode.TASK_EXIT_NONZERO
    assert state.failure.exit_code == 3 and state.exit_code == 3
    assert state.failure.stage is FailureStage.EXECUTE
    assert "something broke" in state.failure.message
    assert (await harness.states(job.run_id))[-3:] == ["PENDING", "RUNNING", "FAILED"]


async def test_cancelling_a_running_task_stops_its_container(
    harness: Harness, images: dict[str, Image], executor: Client
) -> None:
    task_id = await harness.task(images["script"], inputs=("script",), outputs=("out",))
    job = await harness.run(task_id, {"script": b"sleep 300"}, ("out",))
    running = await harness.reaches(job.run_id, RunStatus.RUNNING)
    assert running.container_id is not None
    # RUNNING is recorded just before the container starts
    await eventually(lambda: _true(bool(containers(harness.label, running_only=True))), what="container running")
    await harness.runlog.execute(job.run_id, CancelRun())
    state = await harness.ended(job.run_id, within=20)
    assert state.failure is not None and state.failure.code is FailureCode.CANCELLED
    assert state.failure.stage is FailureStage.EXECUTE
    await eventually(lambda: _none(containers(harness.label)), within=10, what="container removed")


async def test_a_time_limit_fails_the_run_with_timeout(
    harness: Harness, images: dict[str, Image], executor: Client
) -> None:
    task_id = await harness.task(images["script"], inputs=("script",), outputs=("out",))
    job = await harness.run(task_id, {"script": b"sleep 300"}, ("out",), time_limit=1.5)
    state = await harness.ended(job.run_id, within=30)
    assert state.failure is not None and state.failure.code is FailureCode.TIMEOUT
    types = [e.type for e in await harness.store.read(job.run_id)]
    assert types[-3:] == ["started", "cancel_requested", "failed"]
    assert state.ended_at is not None and state.started_at is not None
    assert (state.ended_at - state.started_at).total_seconds() < 15
    await eventually(lambda: _none(containers(harness.label)), within=10, what="container removed")


PROBE = (
    b"{ cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; "
    b"ls /sys/class/net | tr '\\n' ' '; echo; "
    b"cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; "
    b"id -u; } > /outputs/out"
)


@pytest.mark.parametrize("internet", [False, True])
async def test_resources_and_network_apply_inside_the_container(
    harness: Harness, images: dict[str, Image], executor: Client, internet: bool
) -> None:
    ram = 96 * 1024**2
    resources = TaskResources(cpus=1, ram_bytes=ram, internet=internet)
    task_id = await harness.task(images["script"], inputs=("script",), outputs=("out",), resources=resources)
    job = await harness.run(task_id, {"script": PROBE}, ("out",))
    state = await harness.ended(job.run_id)
    assert state.status is RunStatus.FINISHED, state.failure
    memory, interfaces, pids, _uid = harness.storage.received[job.run_id]["out"].decode().splitlines()
    assert int(memory) == ram
    assert pids == "1024"
    if internet:
        assert "lo" in interfaces.split() and len(interfaces.split()) > 1
    else:
        assert interfaces.split() == ["lo"]


async def test_a_task_over_its_memory_is_oom_killed(
    harness: Harness, images: dict[str, Image], executor: Client
) -> None:
    resources = TaskResources(cpus=1, ram_bytes=16 * 1024**2)
    task_id = await harness.task(images["script"], inputs=("script",), outputs=("out",), resources=resources)
    # a 64 MiB block read into memory at once cannot fit in 16 MiB
    job = await harness.run(task_id, {"script": b"dd if=/dev/zero of=/dev/null bs=64M count=1; exit 1"}, ("out",))
    state = await harness.ended(job.run_id)
    assert state.failure is not None and state.failure.code is FailureCode.OOM_KILLED, state.failure


async def test_logs_reach_nats_live_and_the_log_blob(
    harness: Harness, images: dict[str, Image], executor: Client
) -> None:
    task_id = await harness.task(images["script"], inputs=("script",), outputs=("out",))
    job = await harness.run(task_id, {"script": b""}, ("out",), publish=False)
    lines: list[LogLine] = []

    async def on_line(msg: Msg) -> None:
        lines.append(msgspec.json.decode(msg.data, type=LogLine))

    sub = await harness.nc.subscribe(harness.subjects.logs(job.run_id), cb=on_line)
    script = b"echo first; echo oops >&2; sleep 2; echo last; echo 7 > /outputs/out"
    harness.storage.inputs[job.run_id] = {"script": script}
    await harness.publish(job)
    # live: the first lines arrive while the task still sleeps
    await eventually(lambda: _true(len(lines) >= 2), within=30, what="live lines")
    assert (await harness.runlog.load(job.run_id)).status is RunStatus.RUNNING
    state = await harness.ended(job.run_id)
    await sub.unsubscribe()
    assert state.status is RunStatus.FINISHED, state.failure
    # the engine keeps order within a stream; stdout and stderr are separate pipes
    assert [line.line for line in lines if line.stream == "stdout"] == ["first", "last"]
    assert [line.line for line in lines if line.stream == "stderr"] == ["oops"]
    assert all(line.run_id == job.run_id and line.at for line in lines)
    blob = b"".join([c async for c in harness.blobs.get(layout.run_log(job.run_id))])
    assert sorted(blob.decode().splitlines()) == ["first", "last", "oops"] and blob.endswith(b"\n")


async def test_the_log_is_capped_and_says_so(harness: Harness, images: dict[str, Image]) -> None:
    client = await harness.executor(LOG_CAP_BYTES="1024")()
    try:
        task_id = await harness.task(images["script"], inputs=("script",), outputs=("out",))
        script = b"i=0; while [ $i -lt 500 ]; do echo line-$i; i=$((i+1)); done; echo 1 > /outputs/out"
        job = await harness.run(task_id, {"script": script}, ("out",))
        state = await harness.ended(job.run_id)
    finally:
        await client.close()
    assert state.status is RunStatus.FINISHED
    blob = (b"".join([c async for c in harness.blobs.get(layout.run_log(job.run_id))])).decode()
    assert blob.startswith("line-0\nline-1\n")
    assert "line-499" not in blob
    assert blob.rstrip().endswith("(LOG_CAP_BYTES)]") and len(blob) < 1024 + 200


async def test_outputs_are_redelivered_when_storage_fails_briefly(
    harness: Harness, images: dict[str, Image], executor: Client
) -> None:
    harness.storage.fail_outputs = 1
    task_id = await harness.task(images["add"], inputs=("a", "b"), outputs=("sum",))
    job = await harness.run(task_id, {"a": b"40", "b": b"2"}, ("sum",))
    state = await harness.ended(job.run_id)
    assert state.status is RunStatus.FINISHED
    assert harness.storage.received[job.run_id] == {"sum": b"42\n"}


async def test_a_missing_image_hands_the_run_back_until_it_fails(
    harness: Harness, images: dict[str, Image], executor: Client
) -> None:
    # a task whose image is neither in the engine nor in the blob store
    missing = Image("appengine-test/none:0", "sha256:" + "0" * 64, images["add"].tar)
    task_id = await harness.task(missing, inputs=("a", "b"), outputs=("sum",))
    await harness.blobs.delete(layout.task_image(task_id))
    job = await harness.run(task_id, {"a": b"1", "b": b"1"}, ("sum",))
    for attempt in (1, 2):

        async def retried(attempt: int = attempt) -> RunState | None:
            state = await harness.runlog.load(job.run_id)
            return state if state.status is RunStatus.QUEUED and state.attempt == attempt else None

        handed_back: RunState | None = await eventually(retried, what=f"attempt {attempt} handed back")
        assert handed_back is not None
        state = handed_back
        assert (await harness.store.read(job.run_id))[-1].type == "retried"
        # as the scheduler does for a `retried` event: a new job at the new sequence
        await harness.publish(RunJob(run_id=job.run_id, task_id=task_id, queued_seq=state.version))
    state = await harness.ended(job.run_id)
    assert state.failure is not None and state.failure.code is FailureCode.IMAGE_UNAVAILABLE
    assert state.attempt == 3 and "gave up after 3 attempts" in state.failure.message
    assert containers(harness.label) == []


async def test_stale_and_duplicate_jobs_are_dropped(
    harness: Harness, images: dict[str, Image], executor: Client
) -> None:
    task_id = await harness.task(images["add"], inputs=("a", "b"), outputs=("sum",))
    job = await harness.run(task_id, {"a": b"1", "b": b"2"}, ("sum",))
    state = await harness.ended(job.run_id)
    assert state.status is RunStatus.FINISHED
    # the same job again (a redelivery) and one for an older sequence: both acked and dropped
    await harness.js.publish(harness.subjects.jobs, msgspec.json.encode(job))
    stale = RunJob(run_id=job.run_id, task_id=task_id, queued_seq=job.queued_seq - 1)
    await harness.publish(stale)

    async def drained() -> bool:
        info = await harness.js.consumer_info(harness.subjects.jobs_stream, DURABLE)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    await eventually(drained, within=20, what="jobs acked")
    assert (await harness.store.read(job.run_id))[-1].type == "finished"


async def test_a_restarted_executor_adopts_its_running_container(harness: Harness, images: dict[str, Image]) -> None:
    task_id = await harness.task(images["script"], inputs=("script",), outputs=("out",))
    job = await harness.run(task_id, {"script": b"sleep 4; echo done > /outputs/out"}, ("out",))
    first = await harness.executor(SHUTDOWN_TIMEOUT="0")()
    try:
        running = await harness.reaches(job.run_id, RunStatus.RUNNING)
        await eventually(lambda: _true(bool(containers(harness.label, running_only=True))), what="container running")
    finally:
        await first.close()  # the executor goes away mid-run; its container does not
    assert running.container_id is not None
    alive = containers(harness.label, f"{LABEL_RUN}={job.run_id}", running_only=True)
    assert len(alive) == 1 and running.container_id.startswith(alive[0])
    assert (await harness.runlog.load(job.run_id)).status is RunStatus.RUNNING
    second = await harness.executor()()
    try:
        state = await harness.ended(job.run_id)
    finally:
        await second.close()
    assert state.status is RunStatus.FINISHED, state.failure
    assert harness.storage.received[job.run_id] == {"out": b"done\n"}
    assert state.attempt == 1 and [e.type for e in await harness.store.read(job.run_id)].count("started") == 1


async def _none(items: list[str]) -> bool:
    return not items


async def _true(value: bool) -> bool:
    return value
