"""A worker process for the multiprocess test: watch an engine, check out N connections, keep
one held, publish the gauges, then wait for stdin to close."""

from __future__ import annotations

import asyncio
import sys

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from observer import Observer


async def main(url: str, checkouts: int) -> None:
    engine = create_async_engine(url, pool_size=3, max_overflow=0)
    obs = Observer(sweep_interval_seconds=0.05)
    obs.watch(engine, name="app")
    for _ in range(checkouts):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    held = await engine.connect()
    await held.execute(text("SELECT 1"))
    obs.push_gauges()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await held.close()
    obs.close()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
