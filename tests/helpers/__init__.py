"""Helpers shared by the tests: the real PostgreSQL, required dependencies, reading samples."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_HOST = os.environ.get("OBSERVER_TEST_PGHOST", "127.0.0.1")
PG_PORT = int(os.environ.get("OBSERVER_TEST_PGPORT", "5432"))
PG_USER = os.environ.get("OBSERVER_TEST_PGUSER", "postgres")


def require(condition: bool, reason: str) -> None:
    """Skip locally when a real dependency is missing; in CI the skip fails the run."""
    if not condition:
        pytest.skip(reason)


async def admin(statement: str) -> None:
    """Run one statement on the server's ``postgres`` database (create or drop databases)."""
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def postgres_up() -> bool:
    """Whether the real PostgreSQL answers."""
    try:
        asyncio.run(admin("SELECT 1"))
    except Exception:
        return False
    return True


@contextlib.contextmanager
def throwaway_database(prefix: str) -> Iterator[str]:
    """A new, uniquely named database on the real PostgreSQL, dropped (forcibly) on exit."""
    require(postgres_up(), f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield name
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """One sample's value as a scrape would see it (None when the series does not exist)."""
    return registry.get_sample_value(name, labels)


def hook_errors(registry: CollectorRegistry) -> float:
    """All errors swallowed by observer hooks, whichever hook. Hooks defer counting an error
    (a scrape does not run deferred work, the sweeper does), so the observers of ``registry``
    are flushed first: an error the sweeper has not counted yet still shows."""
    from observer._observer import live_observers

    for obs in live_observers():
        if obs.registry is registry:
            obs.flush()
    total = 0.0
    for metric in registry.collect():
        if metric.name == "observer_hook_errors":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total
