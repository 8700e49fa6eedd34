"""Connections returned to a pool that ``dispose()`` replaced stay open there (SQLAlchemy closes
only the connections idle at dispose time): the idle gauge counts them."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from observer import Observer
from tests.helpers import sample

pytestmark = pytest.mark.postgres


async def test_connection_returned_to_a_replaced_pool_counts_as_idle(
    make_engine: Callable[..., AsyncEngine],
    make_observer: Callable[..., Observer],
    registry: CollectorRegistry,
) -> None:
    """Held across dispose(): out (1) while held, then idle (1) in the old pool until that
    pool closes it."""
    engine = make_engine(pool_size=2, max_overflow=0)
    make_observer().watch(engine, name="app")
    conn = await engine.connect()
    await conn.execute(text("SELECT 1"))
    old_pool = engine.sync_engine.pool
    await engine.dispose()
    out, idle = "sqlalchemy_pool_checked_out_connections", "sqlalchemy_pool_checked_in_connections"
    assert sample(registry, out, pool="app") == 1
    assert sample(registry, idle, pool="app") == 0
    await conn.close()
    assert sample(registry, out, pool="app") == 0
    assert sample(registry, idle, pool="app") == 1
    await greenlet_spawn(old_pool.dispose)  # what the old pool's garbage collection would do
    assert sample(registry, idle, pool="app") == 0


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_replaced_pool_collected_with_idle_connections_counts_them_closed(
    make_engine: Callable[..., AsyncEngine],
    make_observer: Callable[..., Observer],
    registry: CollectorRegistry,
) -> None:
    """When the garbage collector frees a replaced pool, the connections idle in it go without a
    close event: they are counted closed (garbage_collected), so opened - closed stays the
    number of connections open."""
    engine = make_engine(pool_size=2, max_overflow=0)
    obs = make_observer()
    obs.watch(engine, name="app")
    conn = await engine.connect()
    await conn.execute(text("SELECT 1"))
    await engine.dispose()
    await conn.close()
    del conn
    closed = "sqlalchemy_pool_connections_closed_total"
    assert sample(registry, closed, pool="app", reason="garbage_collected") == 0
    gc.collect()
    obs.flush()  # the sweeper's tick: runs the work deferred out of hooks
    assert sample(registry, closed, pool="app", reason="garbage_collected") == 1
    assert sample(registry, "sqlalchemy_pool_connections_opened_total", pool="app") == 1
    assert sample(registry, "sqlalchemy_pool_checked_in_connections", pool="app") == 0
