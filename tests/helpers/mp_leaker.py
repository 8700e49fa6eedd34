"""A worker process for the multiprocess leak-origins test: leak two sessions from one line and
one from another (too_old), count them, close everything and exit."""

from __future__ import annotations

import asyncio
import sys

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from observer import Observer


async def leak_twice(engine: AsyncEngine, kept: list[AsyncSession]) -> None:
    for _ in range(2):
        kept.append(session := AsyncSession(engine))
        await session.execute(text("SELECT 1"))


async def leak_once(engine: AsyncEngine, kept: list[AsyncSession]) -> None:
    kept.append(session := AsyncSession(engine))
    await session.execute(text("SELECT 2"))


async def main(url: str) -> None:
    engine = create_async_engine(url, pool_size=3, max_overflow=0)
    obs = Observer(leak_threshold_seconds=0.01, sweep_interval_seconds=10, metrics_path=None)
    obs.watch(engine, name="app")
    kept: list[AsyncSession] = []
    await leak_twice(engine, kept)
    await leak_once(engine, kept)
    await asyncio.sleep(0.05)
    obs.sessions.check_age()
    for session in kept:
        await session.close()
    obs.close()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
