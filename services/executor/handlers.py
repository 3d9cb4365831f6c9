"""Use cases of the executor: take a run, prepare and start its container, watch it to its end,
hand it back on infrastructure failures, and adopt its containers after a restart.

The executor appends what happened to the container, and nothing else::

    QUEUED --TakeRun--> PENDING --StartRun--> RUNNING --FailRun--> FAILED   (exit code, OOM, cancel, time limit)
                                                      \\--outputs to storage--> FINISHED | FAILED (storage appends)
    PENDING | RUNNING --RetryRun--> QUEUED (or FAILED after the last attempt)   (Docker, blobs, storage failing)

A job may be delivered more than once and to several executors: the run log decides. A job whose
run is not QUEUED at the job's sequence has moved on and is dropped; of two executors taking the
same run, the optimistic append lets one win. Every path that ends a run removes its container;
a cancelled handler (shutdown) leaves a running container alone for the restarted executor to adopt.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import pathlib
import time
import uuid
from collections.abc import Awaitable, Coroutine
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.executor.errors import ContainerGone, ImageUnavailable, Retryable, StorageUnavailable
from services.executor.metrics import ExecutorMetrics
from services.executor.runtime import (
    LABEL_ATTEMPT,
    LABEL_EXECUTOR,
    LABEL_RUN,
    LABEL_TASK,
    ContainerSpec,
    ContainerStatus,
    Engine,
)
from services.executor.settings import ExecutorSettings
from services.executor.storage import StorageClient
from services.executor.tasklogs import LiveLog
from shared.blobstore import BlobStore
from shared.contracts import RunJob, Subjects
from shared.domain.decide import CheckTimeout, Command, FailRun, RetryRun, StartRun, TakeRun
from shared.domain.errors import DomainError, InvalidRunState
from shared.domain.events import (
    CancelRequested,
    FailureCode,
    FailureStage,
    RunDeleted,
    RunFailed,
    RunFinished,
    RunRetried,
    RunStatus,
)
from shared.domain.state import RunState
from shared.runlog.runs import RunLog
from shared.service import owned_task
from shared.tasks import Task, TaskDirectory

log = structlog.get_logger("executor")

_OWNED = (RunStatus.PENDING, RunStatus.RUNNING)
# delivering outputs: attempts, while the container (and so the outputs) still exist
_OUTPUT_ATTEMPTS = 3
# the events (subjects' last token) after which a watched run may have to stop: cancelled,
# deleted, ended or handed to another attempt by someone else
_STOPPING_EVENTS = frozenset(
    str(e.__struct_config__.tag) for e in (CancelRequested, RunDeleted, RunFailed, RunFinished, RunRetried)
)
_MIN_MEMORY = 6 * 1024**2


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


class Executor:
    """Runs jobs on one Docker engine as executor ``settings.executor_id``."""

    def __init__(
        self,
        settings: ExecutorSettings,
        engine: Engine,
        runlog: RunLog,
        tasks: TaskDirectory,
        blobs: BlobStore,
        storage: StorageClient,
        nc: NATS,
        subjects: Subjects,
        metrics: ExecutorMetrics,
    ) -> None:
        self.settings = settings
        self.id = settings.executor_id
        self.engine = engine
        self.runlog = runlog
        self.tasks = tasks
        self.blobs = blobs
        self.storage = storage
        self.nc = nc
        self.subjects = subjects
        self.metrics = metrics
        self._active: dict[uuid.UUID, asyncio.Task[str]] = {}
        # where a run's log spills from memory until it is stored (not /tmp, often a small tmpfs)
        self.spool_dir = pathlib.Path(settings.data_dir) / "tmp" / "executor"
        self.spool_dir.mkdir(parents=True, exist_ok=True)

    @property
    def active_runs(self) -> frozenset[uuid.UUID]:
        return frozenset(self._active)

    # --- jobs -------------------------------------------------------------------------------------

    async def handle(self, job: RunJob) -> str:
        """Run the job's run to its end if the job is still current; the outcome, for logs.

        Returns once the job can be acknowledged: the run is terminal, handed back, or not ours.
        """
        active = self._active.get(job.run_id)
        if active is not None:
            # a redelivery of the job of a run this process runs (e.g. adopted): wait with it
            return await asyncio.shield(active)
        state = await self.runlog.load(job.run_id)
        if state.status is RunStatus.QUEUED and state.version == job.queued_seq:
            try:
                state, _ = await self.runlog.execute(job.run_id, TakeRun(executor_id=self.id), state=state)
            except DomainError:
                return "taken_elsewhere"
            log.info("run.taken", run_id=str(job.run_id), attempt=state.attempt)
            return await self._own(job.run_id, self._execute(state))
        if state.status in _OWNED and state.executor_id == self.id:
            # ours by the log but not running here: this process restarted, or a handler died
            return await self._own(job.run_id, self._recover_run(state))
        # moved on (cancelled, retried under a newer job, terminal) or another executor's: if
        # that executor is gone, the scheduler's watchdog hands the run back, not us
        return "moved_on"

    async def _own(self, run_id: uuid.UUID, work: Coroutine[Any, Any, str]) -> str:
        task = asyncio.create_task(work, name=f"run-{run_id}")
        self._active[run_id] = task
        try:
            return await task
        finally:
            self._active.pop(run_id, None)

    # --- execution ------------------------------------------------------------------------------

    def _spec(self, state: RunState, task: Task) -> ContainerSpec:
        registered = task.registered
        resources = registered.resources
        return ContainerSpec(
            name=f"appengine-{state.run_id}-{state.attempt}",
            image_id=registered.image_id,
            labels={
                LABEL_RUN: str(state.run_id),
                LABEL_EXECUTOR: self.id,
                LABEL_TASK: str(task.id),
                LABEL_ATTEMPT: str(state.attempt),
            },
            nano_cpus=None if resources.cpus is None else int(resources.cpus * 1e9),
            # the engine refuses limits under 6 MiB; such a task would fail every attempt
            memory_bytes=max(resources.ram_bytes or self.settings.default_ram_bytes, _MIN_MEMORY),
            gpus=resources.gpus,
            internet=resources.internet,
            pids_limit=self.settings.pids_limit,
        )

    async def _execute(self, state: RunState) -> str:
        """A run this executor just took (PENDING): prepare, start, watch, end."""
        run_id = state.run_id
        started = time.monotonic()
        container_id: str | None = None
        try:
            assert state.task_id is not None
            task = await self.tasks.by_id(state.task_id)
            if task is None:
                return await self._end(
                    run_id, FailRun(code=FailureCode.TASK_DELETED, message="task deleted", stage=FailureStage.PREPARE)
                )
            spec = self._spec(state, task)
            try:
                container_id = await self.engine.create(spec)
            except ContainerGone:
                # the engine answers 404 for an image it lacks (asking first would cost every
                # run a request): load it from the blob store, then create
                await self.ensure_image(task)
                container_id = await self.engine.create(spec)
            registered = task.registered
            # one archive call: each costs the engine a helper process (about 100 ms of CPU)
            async with self.storage.inputs(run_id, registered.input_folder, registered.output_folder) as inputs:
                await self.engine.put_archive(container_id, "/", inputs)
            try:
                state, _ = await self.runlog.execute(run_id, StartRun(container_id=container_id), state=state)
            except InvalidRunState:
                # cancelled, ended or handed to another executor while preparing: it never ran
                await self.engine.remove(container_id)
                state = await self.runlog.load(run_id)
                if state.executor_id != self.id or state.status is not RunStatus.PENDING:
                    return self._count("superseded")
                return await self._end_cancelled(run_id, FailureStage.PREPARE, None)
            await self.engine.start(container_id)
        except Retryable as exc:
            if container_id is not None:
                await self._remove_quietly(container_id)
            return await self._hand_back(run_id, exc)
        except asyncio.CancelledError:
            # shutdown while preparing: nothing ran yet, so hand the run back at once
            if container_id is not None:
                await self._remove_quietly(container_id)
            await self._hand_back(run_id, Retryable("executor stopped while preparing the run"))
            raise
        self.metrics.prepare_seconds.observe(time.monotonic() - started)
        log.info("run.started", run_id=str(run_id), container=container_id[:12])
        return await self._watch(state, container_id, task, since=None)

    async def ensure_image(self, task: Task) -> None:
        """Load the task's image into the engine from the blob store unless it is there."""
        key = task.registered.image_key
        image_id = task.registered.image_id
        if await self.engine.has_image(image_id):
            return
        if not await self.blobs.exists(key):
            raise ImageUnavailable(f"image {image_id} is neither in the engine nor in the blob store at {key}")
        log.info("image.loading", task_id=str(task.id), image_id=image_id)
        offset, length = task.registered.image_offset, task.registered.image_length
        if await self.engine.ensure_image(image_id, lambda: self.blobs.get(key, offset=offset, length=length)):
            self.metrics.image_loads.inc()

    async def _watch(self, state: RunState, container_id: str, task: Task, *, since: str | None) -> str:
        """Follow a started container to its exit, enforcing cancellation and the time limit."""
        run_id = state.run_id
        live = LiveLog(
            self.engine,
            self.nc,
            self.subjects,
            run_id,
            container_id,
            self.settings.log_cap_bytes,
            self.spool_dir,
            since=since,
        )
        try:
            try:
                async with owned_task(f"logs-{run_id}", live.run()) as pump:
                    stopped_for, exit_seen = await self._wait_or_stop(state, container_id)
                    status = await self.engine.inspect(container_id)
                    # the engine ends the followed log at exit; give the last lines a moment to arrive
                    await asyncio.wait({pump}, timeout=5)
            except Retryable as exc:
                await self._remove_quietly(container_id)
                return await self._hand_back(run_id, exc)
            ran_until = time.monotonic()
            if stopped_for != "superseded":
                await live.store(self.blobs, exit_seen)
        finally:
            live.close()
        try:
            if stopped_for == "superseded":
                outcome = self._count("superseded")
            elif isinstance(stopped_for, FailureCode):
                outcome = await self._end_cancelled(run_id, FailureStage.EXECUTE, status.exit_code, stopped_for)
            else:
                outcome = await self._conclude(run_id, container_id, task, status, list(live.tail))
        except Retryable as exc:
            outcome = await self._hand_back(run_id, exc)
        # not on cancellation (shutdown): the exited container waits for the restarted executor
        await self._remove_quietly(container_id)
        self.metrics.collect_seconds.observe(time.monotonic() - ran_until)
        return outcome

    async def _wait_or_stop(self, state: RunState, container_id: str) -> tuple[FailureCode | str | None, float]:
        """Wait for the exit; stop the container when the run is cancelled, times out or is lost.

        Returns why it stopped, and when the engine's wait for the exit returned (monotonic).
        Why: ``None`` for an exit on its own, the failure code for a stop by cancellation or
        time limit, ``"superseded"`` when the run log no longer gives this container the run.
        Woken by the run's events on NATS, and checks the log every ``WATCH_INTERVAL`` anyway.
        """
        run_id = state.run_id
        wake = asyncio.Event()

        async def on_event(msg: Msg) -> None:
            # the run's own progress (this executor's pending and started) changes nothing here
            if msg.subject.rpartition(".")[2] in _STOPPING_EVENTS:
                wake.set()

        sub = await self.nc.subscribe(self.subjects.run_events(run_id), cb=on_event)
        started = time.monotonic()
        waiter = asyncio.create_task(self.engine.wait(container_id), name=f"wait-{run_id}")
        # when the wait returned, not when this loop noticed (it may be in a load or a stop)
        exited: list[float] = []
        waiter.add_done_callback(lambda _: exited.append(time.monotonic()))
        stopped_for: FailureCode | str | None = None
        try:
            while not waiter.done():
                timeout = self.settings.watch_interval
                if state.deadline is not None and stopped_for is None:
                    left = (state.deadline - self.runlog.clock()).total_seconds()
                    timeout = max(0.0, min(timeout, left))
                async with owned_task(f"wake-{run_id}", _wait_event(wake)) as woken:
                    await asyncio.wait({waiter, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if waiter.done() or stopped_for is not None:
                    continue
                wake.clear()
                state = await self.runlog.load(run_id)
                if state.status is RunStatus.RUNNING and not state.cancel_requested and _past(state, self.runlog):
                    # the time limit holds even when the scheduler (which also checks it) is down
                    state, _ = await self.runlog.execute(run_id, CheckTimeout(), state=state)
                if state.terminal or state.executor_id != self.id or state.container_id != container_id:
                    stopped_for = "superseded"
                elif state.cancel_requested or state.deleted:
                    stopped_for = state.cancel_code or FailureCode.CANCELLED
                else:
                    continue
                log.info("run.stopping", run_id=str(run_id), reason=str(stopped_for))
                await self.engine.stop(container_id, self.settings.stop_grace_seconds)
            await waiter
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError, Retryable):
                await waiter
            await sub.unsubscribe()
            self.metrics.run_seconds.observe(time.monotonic() - started)
        # the callback runs soon after the wait returns, maybe not yet
        return stopped_for, exited[0] if exited else time.monotonic()

    async def _conclude(
        self, run_id: uuid.UUID, container_id: str, task: Task, status: ContainerStatus, tail: list[str]
    ) -> str:
        """The end of a container that exited on its own."""
        if status.oom_killed:
            limit = task.registered.resources.ram_bytes or self.settings.default_ram_bytes
            message = f"the task was killed for using more than its memory limit of {limit} bytes"
            return await self._end(
                run_id,
                FailRun(
                    code=FailureCode.OOM_KILLED, message=message, stage=FailureStage.EXECUTE, exit_code=status.exit_code
                ),
            )
        if status.exit_code != 0:
            last = "\n".join(tail[-10:])
            message = f"the task exited with code {status.exit_code}" + (f"; last lines:\n{last}" if last else "")
            return await self._end(
                run_id,
                FailRun(
                    code=FailureCode.TASK_EXIT_NONZERO,
                    message=message,
                    stage=FailureStage.EXECUTE,
                    exit_code=status.exit_code,
                ),
            )
        return await self._deliver_outputs(run_id, container_id, task.registered.output_folder)

    async def _deliver_outputs(self, run_id: uuid.UUID, container_id: str, output_folder: str) -> str:
        """Stream the output folder to storage, which validates it and ends the run."""
        failure: StorageUnavailable | None = None
        for attempt in range(_OUTPUT_ATTEMPTS):
            state = await self.runlog.load(run_id)
            if state.terminal:
                return self._count(state.status.value.lower() if state.status else "ended")
            if state.executor_id != self.id or state.container_id != container_id:
                return self._count("superseded")
            if state.cancel_requested or state.deleted:
                return await self._end_cancelled(run_id, FailureStage.COLLECT, 0)
            try:
                async with self.engine.get_archive(container_id, output_folder) as tar:
                    answer = await self.storage.put_outputs(run_id, 0, tar)
            except ContainerGone:
                message = f"the output folder {output_folder} is missing from the container"
                return await self._end(
                    run_id, FailRun(code=FailureCode.OUTPUTS_INVALID, message=message, stage=FailureStage.COLLECT)
                )
            except StorageUnavailable as exc:
                failure = exc
                log.warning("outputs.not_delivered", run_id=str(run_id), attempt=attempt + 1, error=str(exc))
                await asyncio.sleep(2**attempt)
                continue
            return self._count(answer.lower() or "delivered")
        assert failure is not None
        state = await self.runlog.load(run_id)
        if state.terminal:
            # storage took them after all (the answer was lost)
            return self._count(state.status.value.lower() if state.status else "ended")
        raise failure

    # --- endings --------------------------------------------------------------------------------

    def _count(self, outcome: str) -> str:
        self.metrics.outcomes.labels(outcome).inc()
        return outcome

    async def _end(self, run_id: uuid.UUID, command: Command) -> str:
        try:
            state, _ = await self.runlog.execute(run_id, command)
        except InvalidRunState:
            return self._count("moved_on")  # ended by someone else meanwhile
        failure = state.failure.code.value if state.failure else None
        log.info("run.ended", run_id=str(run_id), state=str(state.status), failure=failure)
        return self._count(failure or str(state.status).lower())

    async def _end_cancelled(
        self, run_id: uuid.UUID, stage: FailureStage, exit_code: int | None, code: FailureCode | None = None
    ) -> str:
        if code is None:
            state = await self.runlog.load(run_id)
            if state.terminal:
                return self._count("moved_on")
            code = state.cancel_code or FailureCode.CANCELLED
        if code is FailureCode.TIMEOUT:
            message = "the run exceeded its time limit and was stopped"
        else:
            message = "the run was cancelled"
        return await self._end(run_id, FailRun(code=code, message=message, stage=stage, exit_code=exit_code))

    async def _hand_back(self, run_id: uuid.UUID, exc: Retryable) -> str:
        """An infrastructure failure: back to the queue for another attempt (or FAILED after the last).

        The job message is then acked: the scheduler publishes a new job for the ``retried``
        event (a new ``queued_seq``), so the old message has nothing left to deliver.
        """
        log.warning("run.handed_back", run_id=str(run_id), code=exc.code.value, reason=exc.reason)
        try:
            state, _ = await self.runlog.execute(run_id, RetryRun(reason=exc.reason, code=exc.code))
        except InvalidRunState:
            return self._count("moved_on")
        if state.status is RunStatus.QUEUED:
            return self._count("retried")
        return self._count(state.failure.code.value if state.failure else "moved_on")

    async def _remove_quietly(self, container_id: str) -> None:
        try:
            await self.engine.remove(container_id)
        except Retryable as exc:
            # recovery removes it on the next start (it carries this executor's label)
            log.warning("container.not_removed", container=container_id[:12], error=str(exc))

    # --- recovery -------------------------------------------------------------------------------

    async def recover(self) -> list[Awaitable[str]]:
        """At start-up: this executor's containers, by label. Adopt the live ones' runs, clean the rest.

        Returns the adoptions to run (each occupies a slot like a job).
        """
        adoptions: list[Awaitable[str]] = []
        seen: set[str] = set()
        for container in await self.engine.containers({LABEL_EXECUTOR: self.id}):
            seen.add(container.labels.get(LABEL_RUN, ""))
            adoption = await self._recover_container(container)
            if adoption is not None:
                adoptions.append(adoption)
        # runs the log gives to this executor but with no container (it died after TakeRun, while
        # loading the image): no job will come back for them and our heartbeats keep the watchdog
        # away, so hand them back now or they stay PENDING for as long as this executor lives
        store = self.runlog.store
        rows = await store.pool.fetch(
            f"SELECT run_id FROM {store.schema}.runs WHERE executor_id = $1 AND state IN ('PENDING', 'RUNNING')",
            self.id,
        )
        for row in rows:
            if str(row["run_id"]) not in seen:
                await self._hand_back(row["run_id"], Retryable("executor restarted without the run's container"))
        return adoptions

    async def _recover_container(self, container: ContainerStatus) -> Awaitable[str] | None:
        try:
            run_id = uuid.UUID(container.labels.get(LABEL_RUN, ""))
        except ValueError:
            await self._remove_quietly(container.id)
            return None
        state = await self.runlog.load(run_id)
        mine = state.executor_id == self.id and state.status in _OWNED
        if mine and state.status is RunStatus.RUNNING and state.container_id == container.id:
            log.info("run.adopting", run_id=str(run_id), container=container.id[:12], running=container.running)
            return self._own(run_id, self._adopt(state, container.id))
        await self._remove_quietly(container.id)
        if mine and state.status is RunStatus.PENDING:
            await self._hand_back(run_id, Retryable("executor restarted while preparing the run"))
        return None

    async def _recover_run(self, state: RunState) -> str:
        """A run the log gives to this executor but that no handler here runs."""
        run_id = state.run_id
        found = await self.engine.containers({LABEL_EXECUTOR: self.id, LABEL_RUN: str(run_id)})
        ours = [c for c in found if c.id == state.container_id]
        for container in found:
            if container not in ours:
                await self._remove_quietly(container.id)
        if state.status is RunStatus.RUNNING and ours:
            return await self._adopt(state, ours[0].id)
        for container in ours:
            await self._remove_quietly(container.id)
        return await self._hand_back(run_id, Retryable("the executor lost the run's container"))

    async def _adopt(self, state: RunState, container_id: str) -> str:
        assert state.task_id is not None
        task = await self.tasks.by_id(state.task_id)
        if task is None:
            await self._remove_quietly(container_id)
            return await self._end(
                state.run_id,
                FailRun(code=FailureCode.TASK_DELETED, message="task deleted", stage=FailureStage.EXECUTE),
            )
        return await self._watch(state, container_id, task, since=_rfc3339(self.runlog.clock()))


async def _wait_event(event: asyncio.Event) -> None:
    await event.wait()


def _past(state: RunState, runlog: RunLog) -> bool:
    return state.deadline is not None and runlog.clock() >= state.deadline
