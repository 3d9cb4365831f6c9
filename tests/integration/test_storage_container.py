"""A round trip through a real container: inputs.tar in with ``docker cp`` (the CLI face of
put_archive), the task runs, the output folder's tar (get_archive) back to storage."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import pytest

from shared.domain.events import RunStatus
from tests.integration.test_storage_fixtures import Env, env_fixture  # noqa: F401  (fixture)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SCRIPT = (
    "mkdir -p /outputs && echo $(( $(cat /inputs/ig) * 2 )) > /outputs/out_int "
    "&& printf 'from %s' \"$(cat /inputs/s)\" > /outputs/out_str && cp -r /inputs/arr /outputs/out_arr"
)


def _docker(args: tuple[str, ...], data: bytes | None, check: bool) -> bytes:
    return subprocess.run(["docker", *args], input=data, capture_output=True, timeout=120, check=check).stdout


async def docker(*args: str, data: bytes | None = None, check: bool = True) -> bytes:
    return await asyncio.to_thread(_docker, args, data, check)


async def test_busybox_task_round_trip(env: Env) -> None:
    run_id = await env.new_run()
    items = [
        {"parameterName": "ig", "value": 4},
        {"parameterName": "s", "value": "abc"},
        {"parameterName": "arr", "value": [{"index": 0, "value": 5}, {"index": 1, "value": 6}]},
    ]
    resp = await env.storage.put(env.url(run_id, "input-provisions"), json=items)
    assert resp.status == 200, await resp.text()
    await env.to_running(run_id)
    resp = await env.storage.get(f"/internal/runs/{run_id}/inputs.tar")
    inputs = await resp.read()

    name = f"storage-test-{uuid.uuid4().hex[:8]}"
    image = "appengine-test/busybox:registry"  # built by the busybox_tar fixture
    await docker("create", "--name", name, "--network", "none", "-w", "/inputs", image, "/bin/sh", "-c", SCRIPT)
    try:
        await docker("cp", "-", f"{name}:/inputs", data=inputs)
        await docker("start", "-a", name)
        outputs = await docker("cp", f"{name}:/outputs", "-")
    finally:
        await docker("rm", "-f", name, check=False)

    resp = await env.storage.put(f"/internal/runs/{run_id}/outputs.tar", params={"exit_code": "0"}, data=outputs)
    assert (resp.status, await resp.json()) == (200, {"state": "FINISHED", "errors": []})
    assert (await env.state(run_id)).status is RunStatus.FINISHED
    resp = await env.storage.get(env.url(run_id, "outputs"))
    values = {v["parameterName"]: v["value"] for v in await resp.json()}
    assert values == {
        "out_int": 8,
        "out_str": "from abc",
        "out_arr": [{"index": 0, "value": 5}, {"index": 1, "value": 6}],
    }
