"""The demo's leaked sessions are collected from a plain task: the pool gets each connection
back once, and a request waiting for the pool at that moment does not share it with anyone."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from observer.demo._leaked import LeakedSessions

SELECT_1 = text("SELECT 1")


@pytest.fixture
def collector_paused() -> Iterator[None]:
    """Automatic garbage collection off: only LeakedSessions.collect() reclaims the leak."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """One connection, so a second user of it would be a double handout."""
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path}/leaked.db", pool_size=1, max_overflow=0, pool_timeout=0.3
    )
    yield engine
    await engine.dispose()


async def leak(engine: AsyncEngine, held: LeakedSessions) -> None:
    """A demo route's leak: the session holds the pool's connection and is never closed."""
    session = AsyncSession(engine)
    await session.execute(SELECT_1)
    held.drop(session)


@pytest.mark.filterwarnings("ignore:The garbage collector is trying:sqlalchemy.exc.SAWarning")
@pytest.mark.usefixtures("collector_paused")
async def test_a_waiting_request_gets_the_leaked_connection_alone(engine: AsyncEngine) -> None:
    held = LeakedSessions()
    await leak(engine, held)
    assert len(held) == 1
    got, release = asyncio.Event(), asyncio.Event()

    async def waiting_request() -> None:
        async with engine.connect() as conn:  # queued: the leak holds the only connection
            await conn.execute(SELECT_1)
            got.set()
            await release.wait()

    task = asyncio.create_task(waiting_request())
    await asyncio.sleep(0.05)
    assert not got.is_set()
    assert held.collect() == 1  # outside any greenlet: the finalizer closes without awaiting
    assert len(held) == 0
    await asyncio.wait_for(got.wait(), 5)
    # The pool gave the connection back once: with the waiting request holding it, the next
    # checkout waits for it (and times out) rather than getting it too.
    with pytest.raises(PoolTimeout):
        async with engine.connect() as conn:
            await conn.execute(SELECT_1)
    release.set()
    await task
    async with engine.connect() as conn:
        assert (await conn.execute(SELECT_1)).scalar_one() == 1


@pytest.mark.filterwarnings("ignore:The garbage collector is trying:sqlalchemy.exc.SAWarning")
@pytest.mark.usefixtures("collector_paused")
async def test_the_task_collects_each_leak_after_its_hold_and_stop_collects_the_rest(
    engine: AsyncEngine,
) -> None:
    held = LeakedSessions(hold=0.2)
    assert held.collect(due_only=True) == 0
    held.start(0.02)
    assert gc.get_freeze_count() > 0  # serving: the collections walk only the new objects
    await leak(engine, held)
    assert held.collect(due_only=True) == 0  # held for its hold first: it keeps the connection
    await asyncio.sleep(0.1)
    assert len(held) == 1
    for _ in range(100):
        if not len(held):
            break
        await asyncio.sleep(0.01)
    assert len(held) == 0
    async with engine.connect() as conn:  # the pool's only connection came back
        await conn.execute(SELECT_1)
    held.drop(object())
    await held.stop()  # collects what is left, however recent
    assert len(held) == 0
    assert gc.get_freeze_count() == 0
