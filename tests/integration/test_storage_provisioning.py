"""JSON provisioning over HTTP with real PostgreSQL, NATS, blobs and an uploaded task."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from shared.domain.events import RunStatus
from tests.integration.test_storage_fixtures import Env, env_fixture  # noqa: F401  (fixture)

V = "APPE-internal-request-validation-error"
POINT = '{"type":"Point","coordinates":[1.0,2.0]}'
CIRCLE = (
    '{"type":"Feature","geometry":{"type":"Point","coordinates":[5,5]},"properties":{"subType":"Circle","radius":3}}'
)
BOWTIE = '{"type":"Polygon","coordinates":[[[0,0],[2,2],[2,0],[0,2],[0,0]]]}'


async def put(env: Env, run_id: uuid.UUID | str, name: str, value: object) -> tuple[int, Any]:
    resp = await env.storage.put(
        env.url(run_id, f"input-provisions/{name}"), json={"parameterName": name, "value": value}
    )
    return resp.status, await resp.json()


def rejected(name: str, message: str, code: str = V) -> dict[str, Any]:
    return {"errorCode": code, "message": message, "details": {"type": "parameter", "parameterName": name}}


ACCEPTED = [
    ("ig", 5, 5, "5"),
    ("ie", 0, 0, "0"),
    ("ie", 10, 10, "10"),
    ("num", 2.25, 2.25, "2.25"),
    ("num", 3, 3.0, "3"),
    ("num", "1e0", 1.0, "1e0"),
    ("special", "nan", "NaN", "nan"),
    ("special", "-inf", "-Infinity", "-inf"),
    ("special", "Infinity", "Infinity", "Infinity"),
    ("s", "héllo", "héllo", "héllo"),
    ("flag", True, True, "true"),
    ("flag", False, False, "false"),
    ("choice", "B", "B", "B"),
    ("when", "2024-02-23T18:00:00Z", "2024-02-23T18:00:00Z", "2024-02-23T18:00:00Z"),
    ("geo", POINT, POINT, POINT),
    ("geo", CIRCLE, CIRCLE, CIRCLE),
]


@pytest.mark.parametrize(("name", "value", "echo", "on_disk"), ACCEPTED)
async def test_a_valid_value_is_echoed_and_stored(
    env: Env, name: str, value: object, echo: object, on_disk: str
) -> None:
    run_id = await env.new_run()
    status, body = await put(env, run_id, name, value)
    assert status == 200, body
    assert body == {"parameterName": name, "value": echo, "taskRunId": str(run_id)}
    assert env.blob(run_id, "inputs", name).read_bytes() == on_disk.encode()
    state = await env.state(run_id)
    assert name in state.provisioned


REFUSED = [
    ("ig", 0, "value must be greater than defined constraint"),
    ("ig", 10, "value must be less than defined constraint"),
    ("ie", -1, "value must be greater than or equal to define constraint"),
    ("ie", 11, "value must be less than or equal to defined constraint"),
    ("ig", "5", "invalid parameter type"),
    ("ig", 5.5, "invalid parameter type"),
    ("ig", True, "invalid parameter type"),
    ("ig", 2**31, "invalid parameter type"),
    ("ig", None, "invalid parameter type"),
    ("num", 0, "value must be greater than defined constraint"),
    ("num", 10.0, "value must be less than defined constraint"),
    ("num", "inf", "value must be less than defined constraint"),
    ("num", "nan", "value cannot be nan"),
    ("num", "abc", "invalid parameter type"),
    ("num", False, "invalid parameter type"),
    ("num", {"a": 1}, "invalid parameter type"),
    ("s", "a", "value must be greater than defined constraint"),
    ("s", "abcdef", "value must be greater than or equal to define constraint"),
    ("s", 12, "invalid parameter type"),
    ("flag", "true", "value does not match defined constraint."),
    ("choice", "C", "value does not match defined constraint."),
    ("choice", 1, "value does not match defined constraint."),
    ("choice", "A\nB", "value must be greater than defined constraint"),
    ("choice", "A" * 257, "value must be greater than defined constraint"),
    ("when", "2024-02-23 18:00", "invalid parameter type"),
    ("when", "2024-02-23T18:00:00", "invalid parameter type"),
    ("when", 1700000000, "invalid parameter type"),
    ("geo", {"type": "Point", "coordinates": [1, 2]}, "invalid parameter type"),
    ("geo", "not json", "failed to parse the given GeoJSON object"),
    ("geo", '{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1]]]}', "failed to parse the given GeoJSON object"),
    ("geo", BOWTIE, "invalid GeoJSON object"),
    ("geo", '{"type":"GeometryCollection","geometries":[]}', "unsupported geometry type"),
    ("geo", '{"type":"FeatureCollection","features":[]}', "unsupported geometry type"),
    (
        "geo",
        '{"type":"Feature","geometry":' + POINT + ',"properties":{"name":"x"}}',
        "unsupported GeoJSON subtype",
    ),
    (
        "geo",
        '{"type":"Feature","geometry":' + POINT + ',"properties":{"subType":"Ellipse"}}',
        "unsupported geometry subtype",
    ),
    (
        "geo",
        '{"type":"Feature","geometry":' + POINT + ',"properties":{"subType":"Circle"}}',
        "missing radius parameter",
    ),
    ("doc", "a text", "invalid parameter type"),
    ("img", "/etc/passwd", "invalid parameter type"),
]


@pytest.mark.parametrize(("name", "value", "message"), REFUSED)
async def test_an_invalid_value_gets_the_upstream_error_and_nothing_changes(
    env: Env, name: str, value: object, message: str
) -> None:
    run_id = await env.new_run()
    before = await env.state(run_id)
    status, body = await put(env, run_id, name, value)
    assert (status, body) == (400, rejected(name, message))
    assert not env.blob(run_id, "inputs", name).exists()
    assert (await env.state(run_id)).version == before.version


async def test_the_upstream_example_body(env: Env) -> None:
    run_id = await env.new_run()
    status, body = await put(env, run_id, "ig", 10)
    assert status == 400
    assert json.dumps(body) == json.dumps(
        {
            "errorCode": "APPE-internal-request-validation-error",
            "message": "value must be less than defined constraint",
            "details": {"type": "parameter", "parameterName": "ig"},
        }
    )


async def test_state_moves_to_provisioned_and_reprovisioning_replaces(env: Env) -> None:
    run_id = await env.new_run()
    assert (await put(env, run_id, "s", "abc"))[0] == 200
    assert (await env.state(run_id)).status is RunStatus.CREATED
    assert (await put(env, run_id, "ig", 3))[0] == 200
    assert (await env.state(run_id)).status is RunStatus.PROVISIONED
    assert (await put(env, run_id, "ig", 4))[0] == 200
    assert env.blob(run_id, "inputs", "ig").read_bytes() == b"4"
    state = await env.state(run_id)
    assert state.status is RunStatus.PROVISIONED


async def test_null_clears_an_optional_input(env: Env) -> None:
    run_id = await env.new_run()
    await put(env, run_id, "s", "abc")
    status, body = await put(env, run_id, "s", None)
    assert (status, body) == (200, {"parameterName": "s", "value": None, "taskRunId": str(run_id)})
    assert not env.blob(run_id, "inputs", "s").exists()
    assert "s" not in (await env.state(run_id)).provisioned


async def test_unknown_run_and_parameter(env: Env) -> None:
    for run in (uuid.uuid4(), "not-a-uuid", "x" * 300, "0"):
        status, body = await put(env, run, "ig", 1)
        assert (status, body) == (
            404,
            {
                "errorCode": "APPE-internal-run-not-found-error",
                "message": "Run not found.",
                "details": {"type": "empty"},
            },
        ), run
    run_id = await env.new_run()
    status, body = await put(env, run_id, "n_unknown", 1)
    assert (status, body) == (
        404,
        {
            "errorCode": "APPE-internal-parameter-not-found",
            "message": "parameter not found",
            "details": {"type": "parameter", "parameterName": "n_unknown"},
        },
    )


async def test_parameter_names_match_case_insensitively_like_upstream(env: Env) -> None:
    run_id = await env.new_run()
    resp = await env.storage.put(env.url(run_id, "input-provisions/IG"), json={"parameterName": "Ig", "value": 2})
    assert resp.status == 200
    assert (await resp.json())["parameterName"] == "ig"
    assert env.blob(run_id, "inputs", "ig").read_bytes() == b"2"


async def test_provisioning_is_refused_once_the_run_left_provisioned(env: Env) -> None:
    run_id = await env.new_run()
    await env.to_running(run_id)
    status, body = await put(env, run_id, "ig", 2)
    assert (status, body) == (
        403,
        {"errorCode": "APPE-internal-task-run-state-error", "message": "run is in invalid state"},
    )
    assert not env.blob(run_id, "inputs", "ig").exists()
