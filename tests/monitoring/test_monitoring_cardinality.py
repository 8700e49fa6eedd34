"""The cardinality budget of docs/reference.md holds on a real scrape: an app on PostgreSQL,
served through the middleware, with its pools and routes counted series by series."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import observer
from observer.metrics._cardinality import budget
from observer.metrics._multiprocess import MultiprocessDirectory
from tests.monitoring.shipped import ROOT

pytestmark = pytest.mark.postgres

BUDGET_1_POOL_50_ROUTES = 694  # docs/reference.md, "Cardinality budget": 1 pool, 50 routes


def _route(engine: AsyncEngine) -> Callable[[int], Awaitable[int]]:
    async def handler(n: int) -> int:
        async with engine.connect() as conn:
            return int(
                (await conn.execute(text("SELECT CAST(:n AS integer)"), {"n": n})).scalar_one()
            )

    return handler


async def _series(url: str, pools: int, routes: int) -> int:
    """Series of one scrape of an app with ``pools`` watched engines, after one request to
    each of its ``routes`` route templates (each checks a connection out of the first pool)."""
    registry = CollectorRegistry()
    engines = [create_async_engine(url, pool_size=1) for _ in range(pools)]
    app = FastAPI()
    for i in range(routes):
        app.add_api_route(f"/items{i}/{{n}}", _route(engines[0]))
    obs = observer.instrument(app, registry=registry, metrics_path=None)
    try:
        for i, engine in enumerate(engines):
            obs.watch(engine, name=f"pool{i}")
        async with AsyncClient(transport=ASGITransport(app=app), base_url="http://app") as client:
            for i in range(routes):
                assert (await client.get(f"/items{i}/{i}")).json() == i
        obs.flush()
        exposition = generate_latest(registry).decode()
    finally:
        obs.close()
        for engine in engines:
            await engine.dispose()
    return sum(1 for line in exposition.splitlines() if line and not line.startswith("#"))


async def test_one_pool_and_fifty_routes_stay_within_the_documented_budget(pg_url: str) -> None:
    """1 pool and 50 routes served: at most the documented 694 series; each more pool costs
    exactly the contract's per-pool figure (88) and each more route its per-route one (10)."""
    lean = budget(leaks=False)
    assert lean.series(1, 50) == BUDGET_1_POOL_50_ROUTES
    one_pool = await _series(pg_url, 1, 50)
    assert one_pool <= BUDGET_1_POOL_50_ROUTES
    assert await _series(pg_url, 2, 50) - one_pool == lean.per_pool == 88
    assert one_pool - await _series(pg_url, 1, 10) == 40 * lean.per_route == 400


def _replica_pool_series(url: str, directory: Path, workers: int) -> int:
    """Series carrying a ``pool`` label in one rendering of a multiprocess directory written by
    ``workers`` real worker processes (one pool each, one connection held), as the sidecar and
    every worker's ``/metrics`` render it."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    args = [sys.executable, "-m", "tests.monitoring.fleet_worker", url, "3", "2"]
    procs = [
        subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        for _ in range(workers)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        registry = CollectorRegistry()
        MultiprocessDirectory(str(directory)).register(registry)
        exposition = generate_latest(registry).decode()
    finally:
        for proc in procs:
            assert proc.stdin is not None
            assert proc.stdout is not None
            proc.stdin.close()
            proc.wait(timeout=30)
            proc.stdout.close()
    return sum(1 for line in exposition.splitlines() if 'pool="' in line and line[0] != "#")


def test_a_multiprocess_replica_pays_its_pool_gauges_per_worker_and_the_rest_once(
    pg_url: str, tmp_path: Path
) -> None:
    """Under PROMETHEUS_MULTIPROC_DIR a pool costs 67 series for the replica (counters and
    histograms summed over its workers) plus 7 per worker (its gauges, label pid): 81 with two
    workers, 88 with three, as docs/reference.md says."""
    two, three = tmp_path / "two", tmp_path / "three"
    two.mkdir()
    three.mkdir()
    assert _replica_pool_series(pg_url, two, 2) == budget(workers=2).per_pool == 81
    assert _replica_pool_series(pg_url, three, 3) == budget(workers=3).per_pool == 88
