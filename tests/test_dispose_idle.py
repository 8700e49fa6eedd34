"""Connections returned to a pool that ``dispose()`` replaced stay open there (SQLAlchemy closes
only the connections idle at dispose time): the idle gauge counts them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from observer import Observer
from tests.conftest import sample

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
