"""One worker process of a simulated replica: a pool under the default ``pool`` label
(``postgresql+asyncpg://host:port/db``), one connection held open, its gauges published to
``PROMETHEUS_MULTIPROC_DIR``; prints ``ready``, then waits for stdin to close.

    python -m tests.monitoring.fleet_worker URL POOL_SIZE MAX_OVERFLOW
"""

from __future__ import annotations

import asyncio
import sys

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from observer import Observer


async def main(url: str, pool_size: int, max_overflow: int) -> None:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=max_overflow)
    obs = Observer(sweep_interval_seconds=0.2)
    obs.watch(engine)  # no name: the label says which server the pool connects to
    held = await engine.connect()
    await held.execute(text("SELECT 1"))
    obs.push_gauges()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await held.close()
    obs.close()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
