"""Live pools: an engine created per request shows as a climbing line, disposed ones fall."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.helpers import sample

pytestmark = pytest.mark.postgres


async def test_engines_nobody_watches_are_counted_while_alive(
    pg_url: str, make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """Engines created per request (never passed to the observer) raise sqlalchemy_pools and
    sqlalchemy_pools_created_total; disposing them brings the live count back down."""
    watched = make_engine()
    make_observer().watch(watched)
    async with watched.connect() as conn:
        await conn.execute(text("SELECT 1"))
    assert sample(registry, "sqlalchemy_pools") == 1.0
    per_request = []
    for _ in range(3):
        engine = create_async_engine(pg_url)
        per_request.append(engine)
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    assert sample(registry, "sqlalchemy_pools") == 4.0
    assert sample(registry, "sqlalchemy_pools_created_total") == 4.0
    for engine in per_request:
        await engine.dispose()
    assert sample(registry, "sqlalchemy_pools") == 1.0
    assert sample(registry, "sqlalchemy_pools_created_total") == 4.0


async def test_a_collected_engine_is_no_longer_live(
    pg_url: str, make_observer: Any, make_engine: Any, registry: CollectorRegistry
) -> None:
    """A pool that is garbage-collected (engine dropped after dispose) leaves the live count."""
    make_observer().watch(make_engine())
    engine = create_async_engine(pg_url)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    assert sample(registry, "sqlalchemy_pools") == 1.0
    await engine.dispose(close=True)
    del engine, conn
    gc.collect()
    assert sample(registry, "sqlalchemy_pools") == 0.0
