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
from observer.metrics._contract import METRICS
from observer.metrics._multiprocess import MultiprocessDirectory
from tests.monitoring.shipped import ROOT

PRODUCTION = ROOT / "docs" / "production.md"


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


def test_docs_production_quotes_the_budget_of_the_contract() -> None:
    """docs/production.md's worked example (1 pool, 50 routes, no leak) has the figures the
    contract gives today: regenerate docs/reference.md and update that paragraph when a metric
    is added."""
    lean = budget()
    text = " ".join(PRODUCTION.read_text().split())
    assert (
        f"exports at most {lean.series(1, 50)} series without leaks ({lean.fixed} fixed, "
        f"{lean.per_pool} for the pool, {lean.per_route} for each route"
    ) in text


@pytest.mark.postgres
async def test_one_pool_and_fifty_routes_stay_within_the_documented_budget(pg_url: str) -> None:
    """1 pool and 50 routes served, no leak: at most the budget's series (718 today); each
    more pool costs exactly the contract's per-pool figure (88) and each more route its
    per-route one (10)."""
    lean = budget()
    one_pool = await _series(pg_url, 1, 50)
    assert one_pool <= lean.series(1, 50)
    assert await _series(pg_url, 2, 50) - one_pool == lean.per_pool
    assert one_pool - await _series(pg_url, 1, 10) == 40 * lean.per_route


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


@pytest.mark.postgres
def test_a_multiprocess_replica_pays_its_pool_gauges_per_worker_and_the_rest_once(
    pg_url: str, tmp_path: Path
) -> None:
    """Under PROMETHEUS_MULTIPROC_DIR a pool costs its counters and histograms once for the
    replica (summed over its workers) plus its gauges once per worker (label pid): 67 + 7 W
    today, 81 with two workers and 88 with three, as docs/reference.md says."""
    two, three = tmp_path / "two", tmp_path / "three"
    two.mkdir()
    three.mkdir()
    per_worker = budget(workers=3).per_pool - budget(workers=2).per_pool
    assert per_worker == sum(
        1 for spec in METRICS if spec.multiprocess_mode == "liveall" and not spec.planned
    )
    assert _replica_pool_series(pg_url, two, 2) == budget(workers=2).per_pool
    assert _replica_pool_series(pg_url, three, 3) == budget(workers=3).per_pool
