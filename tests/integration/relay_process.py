"""A relay as its own process, for tests that kill it: ``python -m tests.integration.relay_process``."""

from __future__ import annotations

import argparse
import asyncio

import asyncpg
import nats

from shared.contracts import Subjects
from shared.runlog.relay import Relay


async def main(dsn: str, schema: str, nats_url: str, prefix: str) -> None:
    nc = await nats.connect(nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    relay = Relay(
        lambda: asyncpg.connect(dsn),
        schema,
        nc.jetstream(),
        Subjects(prefix=prefix),
        standby_retry=0.2,
        publish_timeout=2.0,
        batch_size=200,
    )
    await relay.run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("dsn", "schema", "nats", "prefix"):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args()
    asyncio.run(main(args.dsn, args.schema, args.nats, args.prefix))
