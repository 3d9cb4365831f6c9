"""The `app-engine` command: `up`, `serve <service>`, `rebuild-read-models`.

Each subcommand imports what it needs when it runs, so `app-engine --help` stays fast and this
module depends on no service package.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec

from shared.settings import CommonSettings, SettingsError, load_settings

SERVICES = ("registry", "scheduler", "storage", "executor")


def _up(args: argparse.Namespace) -> int:
    from services.embedded.settings import UpSettings
    from services.embedded.up import up

    settings = load_settings(UpSettings)
    overrides = {
        key: value
        for key, value in (("data_dir", args.data_dir), ("port", args.port), ("host", args.host))
        if value is not None
    }
    if overrides:
        settings = msgspec.structs.replace(settings, **overrides)
        settings.validate()
    return up(settings)


def _serve(args: argparse.Namespace) -> int:
    # exactly what `python -m services.<name>` runs
    importlib.import_module(f"services.{args.service}.__main__").main()
    return 0


def _database_url(data_dir: str | None) -> tuple[str, str | None]:
    """DATABASE_URL if set, else the database of an `app-engine up` on the data directory."""
    if "DATABASE_URL" in os.environ or data_dir is None:
        return os.environ.get("DATABASE_URL", CommonSettings().database_url), None
    from services.embedded.datadir import Layout, read_state

    state = read_state(Layout(Path(data_dir).resolve()).state)
    if state.database_url:
        return state.database_url, data_dir
    return CommonSettings().database_url, None


async def _read_models(database_url: str, schema: str, check: bool) -> int:
    import asyncpg

    from shared.runlog.readmodel import rebuild, verify
    from shared.runlog.schema import check_schema_name
    from shared.runlog.store import EventStore

    try:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2, timeout=10)
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"cannot connect to the database: {exc}", file=sys.stderr)
        return 2
    assert pool is not None
    try:
        store = EventStore(pool, check_schema_name(schema))
        try:
            problems = await verify(store)
        except asyncpg.UndefinedTableError:
            print(f"no run log in schema {schema!r} (DATABASE_SCHEMA)", file=sys.stderr)
            return 2
        for problem in problems:
            print(problem)
        if check:
            print(f"{len(problems)} difference(s) between the read model and the log")
            return 1 if problems else 0
        runs = await rebuild(store)
        print(f"rebuilt the runs read model from the log: {runs} runs, {len(problems)} difference(s) fixed")
        return 0
    finally:
        await pool.close()


def _rebuild_read_models(args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings)
    url, embedded = _database_url(args.data_dir or os.environ.get("DATA_DIR"))
    if embedded is not None:
        print(f"using the embedded database of {embedded}", file=sys.stderr)
    return asyncio.run(_read_models(url, settings.database_schema, args.check))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="app-engine", description="The Cytomine App Engine.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up",
        help="run everything on this machine behind one port",
        description="Start PostgreSQL and NATS (unless DATABASE_URL / NATS_URL are set), the four "
        "services, and serve the whole API on one port. Ctrl-C stops everything.",
    )
    up.add_argument("--data-dir", help="where all data lives (env DATA_DIR, default ./data)")
    up.add_argument("--port", type=int, help="the API port (env PORT, default 8080)")
    up.add_argument("--host", help="the API address (env HOST, default 127.0.0.1)")
    up.set_defaults(func=_up)

    serve = commands.add_parser("serve", help="run one service (as python -m services.<name>)")
    serve.add_argument("service", choices=SERVICES)
    serve.set_defaults(func=_serve)

    rebuild = commands.add_parser(
        "rebuild-read-models",
        help="rebuild the read models from the run log",
        description="Compare the runs read model with a fresh fold of the run log (DATABASE_URL, "
        "DATABASE_SCHEMA), print the differences, then rebuild it. Without DATABASE_URL, "
        "uses the database of an `app-engine up` on --data-dir / DATA_DIR.",
    )
    rebuild.add_argument(
        "--check", action="store_true", help="only compare; exit 1 if the read model differs from the log"
    )
    rebuild.add_argument("--data-dir", help="data directory of `app-engine up` (when DATABASE_URL is unset)")
    rebuild.set_defaults(func=_rebuild_read_models)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"app-engine: invalid setting {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # a Ctrl-C outside `up` (which handles its own signals)
        return 130
