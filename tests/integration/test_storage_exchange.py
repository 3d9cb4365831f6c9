"""Reading inputs, the executor's inputs.tar and the outputs.tar collection, end to end."""

from __future__ import annotations

import io
import tarfile
import uuid
import zipfile
from typing import Any

from shared.domain.events import FailureCode, FailureStage, RunStatus
from tests.integration.test_storage_fixtures import Env, env_fixture, output_tar  # noqa: F401  (fixture)

VALID = {
    "out_int": b"42\n",
    "out_str": b"  hello world \n",
    "out_arr": None,
    "out_arr/array.yml": b"size: 2\n",
    "out_arr/0": b"7",
    "out_arr/1": b"-3\n",
}


async def provision(env: Env, run_id: uuid.UUID, values: dict[str, object]) -> None:
    body = [{"parameterName": k, "value": v} for k, v in values.items()]
    resp = await env.storage.put(env.url(run_id, "input-provisions"), json=body)
    assert resp.status == 200, await resp.text()


async def put_outputs(env: Env, run_id: uuid.UUID, tar: bytes, exit_code: int = 0) -> tuple[int, Any]:
    resp = await env.storage.put(f"/internal/runs/{run_id}/outputs.tar", params={"exit_code": str(exit_code)}, data=tar)
    return resp.status, await resp.json()


async def test_get_inputs_lists_the_provisioned_values(env: Env) -> None:
    run_id = await env.new_run()
    resp = await env.storage.get(env.url(run_id, "inputs"))
    assert (resp.status, await resp.json()) == (
        403,
        {"errorCode": "APPE-internal-task-run-state-error", "message": "run is in invalid state"},
    )
    await provision(
        env,
        run_id,
        {"ig": 3, "special": "nan", "flag": True, "arr": [{"index": 1, "value": 9}, {"index": 0, "value": 8}]},
    )
    resp = await env.storage.get(env.url(run_id, "inputs"))
    assert resp.status == 200
    r = str(run_id)
    assert await resp.json() == [
        {"taskRunId": r, "parameterName": "ig", "type": "INTEGER", "value": 3},
        {"taskRunId": r, "parameterName": "special", "type": "NUMBER", "value": "NaN"},
        {"taskRunId": r, "parameterName": "flag", "type": "BOOLEAN", "value": True},
        {
            "taskRunId": r,
            "parameterName": "arr",
            "type": "ARRAY",
            "value": [{"index": 0, "value": 8}, {"index": 1, "value": 9}],
            "subType": "INTEGER",
        },
    ]


async def test_inputs_tar_is_the_input_folder(env: Env) -> None:
    run_id = await env.new_run()
    await provision(env, run_id, {"ig": 3, "s": "abc", "arr": [{"index": 0, "value": 1}, {"index": 1, "value": 2}]})
    resp = await env.storage.get(f"/internal/runs/{run_id}/inputs.tar")
    assert resp.status == 403  # not before the run is on its way to execution
    await env.to_running(run_id)
    resp = await env.storage.get(f"/internal/runs/{run_id}/inputs.tar")
    assert resp.status == 200
    with tarfile.open(fileobj=io.BytesIO(await resp.read())) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == ["arr", "arr/0", "arr/1", "arr/array.yml", "ig", "s"]
        assert members["arr"].isdir()
        contents = {n: tar.extractfile(m).read() for n, m in members.items() if m.isfile()}  # type: ignore[union-attr]
    assert contents == {"arr/0": b"1", "arr/1": b"2", "arr/array.yml": b"size: 2", "ig": b"3", "s": b"abc"}


async def test_inputs_tar_can_make_the_folders_for_one_archive_call(env: Env) -> None:
    run_id = await env.new_run()
    await provision(env, run_id, {"ig": 3, "arr": [{"index": 0, "value": 1}]})
    await env.to_running(run_id)
    url = f"/internal/runs/{run_id}/inputs.tar"
    resp = await env.storage.get(url, params=[("folder", "/data//in/"), ("mkdir", "/out"), ("mkdir", "/data/in")])
    assert resp.status == 200, await resp.text()
    with tarfile.open(fileobj=io.BytesIO(await resp.read())) as tar:
        members = [(m.name, m.isdir(), m.mode) for m in tar.getmembers()]
    # the folders first, world-writable; never an entry for a parent (/data may exist already)
    assert members == [
        ("data/in", True, 0o777),
        ("out", True, 0o777),
        ("data/in/arr", True, 0o777),
        ("data/in/arr/0", False, 0o666),
        ("data/in/arr/array.yml", False, 0o666),
        ("data/in/ig", False, 0o666),
    ]
    for bad in ("inputs", "/", "/a/../b", "/a\0b"):
        resp = await env.storage.get(url, params={"folder": bad})
        assert resp.status == 400, bad
        assert (await resp.json())["errorCode"] == "APPE-internal-request-validation-error"


async def test_valid_outputs_finish_the_run(env: Env) -> None:
    run_id = await env.new_run()
    await env.to_running(run_id)
    resp = await env.storage.get(env.url(run_id, "outputs"))
    assert resp.status == 403
    assert await put_outputs(env, run_id, output_tar(VALID)) == (200, {"state": "FINISHED", "errors": []})
    state = await env.state(run_id)
    assert state.status is RunStatus.FINISHED
    assert {o.parameter for o in state.outputs} == {"out_int", "out_str", "out_arr"}
    assert env.blob(run_id, "outputs", "out_int").read_bytes() == b"42\n"
    assert env.blob(run_id, "outputs", "out_arr", "array.yml").read_bytes() == b"size: 2\n"
    resp = await env.storage.get(env.url(run_id, "outputs"))
    r = str(run_id)
    assert await resp.json() == [
        {"taskRunId": r, "parameterName": "out_int", "type": "INTEGER", "value": 42},
        {"taskRunId": r, "parameterName": "out_str", "type": "STRING", "value": "hello world"},
        {
            "taskRunId": r,
            "parameterName": "out_arr",
            "type": "ARRAY",
            "value": [{"index": 0, "value": 7}, {"index": 1, "value": -3}],
            "subType": "INTEGER",
        },
    ]
    resp = await env.storage.get(env.url(run_id, "outputs.zip"))
    assert resp.status == 200
    assert resp.headers["Content-Disposition"] == f'attachment; filename="outputs-{run_id}.zip"'
    with zipfile.ZipFile(io.BytesIO(await resp.read())) as z:
        assert z.testzip() is None
        assert sorted(z.namelist()) == ["out_arr/0", "out_arr/1", "out_arr/array.yml", "out_int", "out_str"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        assert z.read("out_int") == b"42\n"
    # the executor may retry: the answer is the same and nothing changes
    version = (await env.state(run_id)).version
    assert await put_outputs(env, run_id, output_tar(VALID)) == (200, {"state": "FINISHED", "errors": []})
    assert (await env.state(run_id)).version == version


def _error(name: str, code: str, message: str) -> dict[str, Any]:
    return {"errorCode": code, "message": message, "details": {"type": "parameter", "parameterName": name}}


V = "APPE-internal-request-validation-error"
MISSING = ("APPE-internal-missing-output-files", "file structure for primitive parameter is missing")


async def _failed_with(env: Env, entries: dict[str, bytes | None], errors: list[dict[str, Any]]) -> str:
    run_id = await env.new_run()
    await env.to_running(run_id)
    assert await put_outputs(env, run_id, output_tar(entries)) == (200, {"state": "FAILED", "errors": errors})
    state = await env.state(run_id)
    assert state.status is RunStatus.FAILED
    assert state.failure is not None
    assert (state.failure.code, state.failure.stage) == (FailureCode.OUTPUTS_INVALID, FailureStage.COLLECT)
    return state.failure.message


async def test_a_missing_output_fails_the_run(env: Env) -> None:
    entries = {k: v for k, v in VALID.items() if k != "out_int"}
    message = await _failed_with(env, entries, [_error("out_int", *MISSING)])
    assert "out_int" in message and "missing" in message


async def test_a_wrong_type_fails_the_run(env: Env) -> None:
    entries = VALID | {"out_int": b"4.5", "out_arr/1": b"x"}
    await _failed_with(
        env,
        entries,
        [
            _error("out_int", "APPE-internal-request-validation-error", "invalid parameter type"),
            _error("out_arr", "APPE-internal-request-validation-error", "invalid parameter type"),
        ],
    )


async def test_constraints_apply_to_outputs(env: Env) -> None:
    entries = VALID | {"out_int": b"-1"}
    await _failed_with(
        env,
        entries,
        [
            _error(
                "out_int",
                "APPE-internal-request-validation-error",
                "value must be greater than or equal to define constraint",
            )
        ],
    )


async def test_a_blank_output_fails_the_run(env: Env) -> None:
    entries = VALID | {"out_str": b" \n\t"}
    await _failed_with(env, entries, [_error("out_str", "APPE-internal-is-blank", "file for parameter is blank")])


async def test_a_directory_instead_of_a_file_fails_the_run(env: Env) -> None:
    entries = {k: v for k, v in VALID.items() if k != "out_int"} | {"out_int": None, "out_int/x": b"1"}
    await _failed_with(
        env,
        entries,
        [_error("out_int", "APPE-internal-is-directory", "file structure for primitive parameter is a directory")],
    )


async def test_array_structure_faults_fail_the_run(env: Env) -> None:
    no_yml = {k: v for k, v in VALID.items() if k != "out_arr/array.yml"}
    await _failed_with(
        env, no_yml, [_error("out_arr", "APPE-internal-missing-metadata", "collection does not have array.yml file")]
    )
    extra = VALID | {"out_arr/2": b"5"}
    await _failed_with(
        env,
        extra,
        [_error("out_arr", "APPE-internal-extra-output-files", "file structure for parameter contains extra files")],
    )
    short = VALID | {"out_arr/array.yml": b"size: 3"}
    await _failed_with(env, short, [_error("out_arr", *MISSING)])


async def test_extra_top_level_files_are_ignored(env: Env) -> None:
    run_id = await env.new_run()
    await env.to_running(run_id)
    entries = VALID | {"notes.txt": b"debug", "tmp": None, "tmp/x": b"1"}
    assert await put_outputs(env, run_id, output_tar(entries)) == (200, {"state": "FINISHED", "errors": []})
    assert not env.blob(run_id, "outputs", "notes.txt").exists()


async def test_a_nonzero_exit_fails_the_run_with_its_code(env: Env) -> None:
    run_id = await env.new_run()
    await env.to_running(run_id)
    assert await put_outputs(env, run_id, output_tar(VALID), exit_code=3) == (200, {"state": "FAILED", "errors": []})
    state = await env.state(run_id)
    assert state.failure is not None
    assert (state.failure.code, state.failure.exit_code) == (FailureCode.TASK_EXIT_NONZERO, 3)


async def test_unusable_archives_fail_the_run(env: Env) -> None:
    for body in (b"not a tar at all" * 100, output_tar({"../escape": b"1"}), b"\0" * (2 * 1024 * 1024)):
        run_id = await env.new_run()
        await env.to_running(run_id)
        status, answer = await put_outputs(env, run_id, body)
        assert (status, answer["state"]) == (200, "FAILED"), answer
        state = await env.state(run_id)
        assert state.failure is not None and state.failure.code is FailureCode.OUTPUTS_INVALID


async def test_outputs_are_refused_before_the_run_runs(env: Env) -> None:
    run_id = await env.new_run()
    status, _ = await put_outputs(env, run_id, output_tar(VALID))
    assert status == 403
    resp = await env.storage.put(f"/internal/runs/{run_id}/outputs.tar", params={"exit_code": "x"}, data=b"")
    assert resp.status == 400
