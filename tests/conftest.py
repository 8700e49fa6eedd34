"""Shared fixtures: fresh registries, throwaway PostgreSQL databases, and no silent skips in CI."""

from __future__ import annotations

import gc
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from observer import Observer

from tests.helpers import IN_CI, PG_HOST, PG_PORT, PG_USER, require, throwaway_database

pytest_plugins = ["pytester"]  # tests/test_pytest_plugin.py runs pytest inside pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI every test is required: a skipped test fails the run."""
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        reporter.write_line(f"CI=true: {len(skipped)} test(s) were skipped; every test is required")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def registry() -> CollectorRegistry:
    """A registry for one test; the global REGISTRY is never touched."""
    return CollectorRegistry()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh database for the test session on the real PostgreSQL; dropped at the end."""
    with throwaway_database("observer_test") as name:
        yield name


@pytest.fixture(scope="session")
def pg_url(pg_database: str) -> str:
    """SQLAlchemy URL (asyncpg) of the session's throwaway database."""
    return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{pg_database}"


@pytest.fixture(scope="session")
def pg_sync_url(pg_database: str) -> str:
    """SQLAlchemy URL (psycopg 3, sync) of the same database, for plain ``Engine`` tests."""
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{pg_database}"


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool (Debian package ``prometheus``)."""
    path = shutil.which("promtool")
    require(path is not None, "promtool is not installed (apt-get install prometheus)")
    assert path is not None
    return path


@pytest.fixture
async def make_engine(pg_url: str) -> AsyncIterator[Callable[..., AsyncEngine]]:
    """Create async engines on the test database; every one is disposed after the test."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engines: list[AsyncEngine] = []

    def make(**kwargs: Any) -> AsyncEngine:
        engine = create_async_engine(pg_url, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.dispose()
    gc.collect()  # what the test leaked is reported against this test, not a later one


@pytest.fixture
def make_observer(registry: CollectorRegistry) -> Iterator[Callable[..., Observer]]:
    """Create an Observer on the test's registry; closed after the test."""
    from observer import Observer

    observers: list[Observer] = []

    def make(**options: Any) -> Observer:
        obs = Observer(registry=registry, **options)
        observers.append(obs)
        return obs

    yield make
    for obs in observers:
        obs.close()
