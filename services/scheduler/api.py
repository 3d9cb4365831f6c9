"""The scheduler's HTTP API: upstream's run endpoints (reference §2.5.7-2.5.8, 2.5.14-2.5.15,
2.5.18) and our additions, documented in ``docs/api.md``:

* ``POST /task-runs/{id}/cancel``: cancel from any non-terminal state;
* ``GET /runs``: every run, filtered by ``task``, ``state`` (repeatable), ``since``/``until``
  (creation time, ISO 8601), paginated by ``offset``/``limit`` (total in ``X-Total-Count``);
* ``GET /task-runs/{id}/events``: the run's history, the envelopes also published on NATS;
* ``GET /events?after=<position>&limit=&aggregate=run|task``: the global feed, by position;
* on run creation an optional body ``{"timeLimit": <seconds>}`` overrides the time limit.
"""

from __future__ import annotations

import datetime as dt
import uuid

import msgspec
from aiohttp import web

from services.scheduler.handlers import BadQuery, BadStateRequest, NotMatching, Scheduler, TaskNotFound, parse_run_id
from services.scheduler.views import state_action, task_body, task_run, task_run_response
from shared.domain.events import RunStatus
from shared.tasks import Task
from shared.web import ApiError, json_response, query_int, render_errors

SCHEDULER = web.AppKey("scheduler", Scheduler)
_encoder = msgspec.json.Encoder()


def install_error_renderers(app: web.Application) -> None:
    render_errors(
        app,
        {
            TaskNotFound: lambda e: ApiError(404, "APPE-internal-task-not-found", "Task not found."),
            BadStateRequest: lambda e: ApiError(
                400, "APPE-internal-task-run-state-error", "unknown state in transition request"
            ),
            BadQuery: lambda e: ApiError(400, "APPE-internal-request-validation-error", str(e)),
            NotMatching: lambda e: ApiError(
                400,
                "APPE-internal-not-matching",
                "collections don't have the same size",
                {"type": "parameter", "parameterName": str(e)},
            ),
        },
    )


async def _task(request: web.Request) -> Task:
    scheduler = request.app[SCHEDULER]
    info = request.match_info
    if "id" in info:
        return await scheduler.task_by_id(info["id"])
    return await scheduler.task_by_name(info["namespace"], info["version"])


async def _time_limit(request: web.Request) -> float | None:
    if not request.can_read_body:
        return None
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise BadQuery('the body must be JSON, e.g. {"timeLimit": 600}') from None
    limit = body.get("timeLimit") if isinstance(body, dict) else None
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit <= 365 * 86400:
        raise BadQuery("timeLimit must be a number of seconds between 1 and 31536000")
    return float(limit)


async def create_run(request: web.Request) -> web.Response:
    task = await _task(request)
    limit = await _time_limit(request)
    state = await request.app[SCHEDULER].create_run(task, limit)
    return json_response(task_run(state, task))


async def list_task_runs(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    task = await _task(request)
    runs = await scheduler.runs_of_task(task)
    body = [{"id": str(r.run_id), "task": task_body(task), "state": r.state} for r in runs]
    return json_response(body)


async def get_run(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    state = await scheduler.get(parse_run_id(request.match_info["run_id"]))
    return json_response(task_run_response(state, await scheduler.task_of(state)))


async def post_state_action(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    run_id = parse_run_id(request.match_info["run_id"])
    try:
        body = msgspec.json.decode(await request.read())
    except msgspec.DecodeError:
        raise BadStateRequest() from None
    state = await scheduler.state_action(run_id, body)
    return json_response(state_action(state, await scheduler.task_of(state)))


async def cancel_run(request: web.Request) -> web.Response:
    scheduler = request.app[SCHEDULER]
    state = await scheduler.cancel(parse_run_id(request.match_info["run_id"]))
    return json_response(task_run_response(state, await scheduler.task_of(state)))


async def delete_run(request: web.Request) -> web.Response:
    await request.app[SCHEDULER].delete(parse_run_id(request.match_info["run_id"]))
    return web.Response(status=200)


async def get_logs(request: web.Request) -> web.Response:
    text = await request.app[SCHEDULER].logs(parse_run_id(request.match_info["run_id"]))
    return web.Response(body=text, content_type="text/plain", charset="utf-8")


async def run_events(request: web.Request) -> web.Response:
    history = await request.app[SCHEDULER].history(parse_run_id(request.match_info["run_id"]))
    return web.Response(body=_encoder.encode(history), content_type="application/json")


def _time(request: web.Request, name: str) -> dt.datetime | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadQuery(f"{name} must be an ISO 8601 date-time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


async def list_runs(request: web.Request) -> web.Response:
    task_id = None
    if "task" in request.query:
        try:
            task_id = uuid.UUID(request.query["task"])
        except ValueError:
            raise BadQuery("task must be a task id") from None
    states = request.query.getall("state", [])
    unknown = [s for s in states if s not in RunStatus.__members__]
    if unknown:
        raise BadQuery(f"unknown state {unknown[0]!r}")
    items, total = await request.app[SCHEDULER].listing(
        task_id=task_id,
        states=states,
        since=_time(request, "since"),
        until=_time(request, "until"),
        offset=query_int(request, "offset", 0, 0, 10**9),
        limit=query_int(request, "limit", 100, 1, 1000),
    )
    return json_response(items, headers={"X-Total-Count": str(total)})


async def event_feed(request: web.Request) -> web.Response:
    aggregate = request.query.get("aggregate")
    if aggregate not in (None, "run", "task"):
        raise BadQuery("aggregate must be run or task")
    events = await request.app[SCHEDULER].runlog.store.read_all(
        after_position=query_int(request, "after", 0, 0, 2**62),
        limit=query_int(request, "limit", 500, 1, 5000),
        aggregate=aggregate,
        since=_time(request, "since"),
    )
    next_after = events[-1].position if events else query_int(request, "after", 0, 0, 2**62)
    body = {"events": events, "next": next_after}
    return web.Response(body=_encoder.encode(body), content_type="application/json")


def add_routes(app: web.Application, prefix: str) -> None:
    r = app.router
    r.add_post(f"{prefix}/tasks/{{id}}/runs", create_run)
    r.add_post(f"{prefix}/tasks/{{namespace}}/{{version}}/runs", create_run)
    r.add_get(f"{prefix}/tasks/{{namespace}}/{{version}}/runs", list_task_runs)
    r.add_get(f"{prefix}/task-runs/{{run_id}}", get_run)
    r.add_delete(f"{prefix}/task-runs/{{run_id}}", delete_run)
    r.add_post(f"{prefix}/task-runs/{{run_id}}/state-actions", post_state_action)
    r.add_post(f"{prefix}/task-runs/{{run_id}}/cancel", cancel_run)
    r.add_get(f"{prefix}/task-runs/{{run_id}}/logs", get_logs)
    r.add_get(f"{prefix}/task-runs/{{run_id}}/events", run_events)
    r.add_get(f"{prefix}/runs", list_runs)
    r.add_get(f"{prefix}/events", event_feed)
