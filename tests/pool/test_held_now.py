"""The held-now gauges: the oldest checkout's age by pool and by route, computed at scrape time
from the trackers' stamps of checked-out connections (a connection never returned keeps them
growing), and pushed in multiprocess mode."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import observer
from tests.helpers import sample

pytestmark = pytest.mark.postgres

POOL = "sqlalchemy_pool_oldest_checkout_seconds"
ROUTE = "sqlalchemy_route_oldest_checkout_seconds"


async def test_oldest_checkout_by_pool_and_route_is_the_age_of_what_is_held_now(
    make_engine: Callable[..., AsyncEngine],
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing out: both gauges read 0. A connection held outside requests and one held by
    /hold: at a scrape 10 s after the later checkout, the pool's gauge is the older one's age,
    route none and /hold each show their own connection's age; returned, all go back to 0."""
    engine = make_engine(pool_size=3, max_overflow=0)
    app = FastAPI()
    entered, release = asyncio.Event(), asyncio.Event()

    @app.get("/hold")
    async def hold() -> int:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            entered.set()
            await release.wait()
        return 1

    obs = observer.instrument(app, engine, registry=registry, metrics_path=None)
    try:
        assert sample(registry, POOL, pool=obs.pool_names[0]) == 0.0
        assert sample(registry, ROUTE, route="none") == 0.0
        outside = await engine.connect()
        await outside.execute(text("SELECT 1"))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            task = asyncio.create_task(http.get("/hold"))
            await entered.wait()
            [tracker] = obs._trackers.values()
            stamps = sorted(tracker.held.values(), key=lambda stamp: stamp[0])
            assert [stamp[1] is None for stamp in stamps] == [True, False]  # outside, /hold
            (t_outside, _, _), (t_hold, _, _) = stamps
            now = t_hold + 10.0
            # the clock is bound as held_now's default argument (no module attribute to patch)
            monkeypatch.setattr(type(obs).held_now, "__defaults__", (lambda: now,))
            assert sample(registry, POOL, pool=tracker.name) == now - t_outside
            assert sample(registry, ROUTE, route="none") == now - t_outside
            assert sample(registry, ROUTE, route="/hold") == 10.0
            monkeypatch.undo()
            release.set()
            assert (await task).status_code == 200
        await outside.close()
        assert sample(registry, POOL, pool=tracker.name) == 0.0
        assert sample(registry, ROUTE, route="none") == 0.0
        assert sample(registry, ROUTE, route="/hold") == 0.0
    finally:
        obs.close()


WORKER = textwrap.dedent(
    """
    import asyncio, sys
    import httpx
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine
    import observer
    from observer.metrics._exposition import render

    async def main() -> None:
        engine = create_async_engine(sys.argv[1], pool_size=2, max_overflow=0)
        app = FastAPI()
        entered, release = asyncio.Event(), asyncio.Event()

        @app.get("/hold")
        async def hold() -> int:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                entered.set()
                await release.wait()
            return 1

        obs = observer.instrument(app, engine, registry=CollectorRegistry(), metrics_path=None)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            task = asyncio.create_task(http.get("/hold"))
            await entered.wait()
            await asyncio.sleep(0.3)
            obs.push_gauges()
            print("HELD", render(obs.registry)[0].decode(), sep="\\n")
            release.set()
            await task
        obs.push_gauges()
        print("AFTER", render(obs.registry)[0].decode(), sep="\\n")
        obs.close()
        await engine.dispose()

    asyncio.run(main())
    """
)


def _value(exposition: str, series: str) -> float:
    """The value of ``series`` (name and labels, as exposed) in ``exposition``."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in the exposition:\n{exposition}")


def test_oldest_checkout_gauges_are_pushed_in_multiprocess_mode(
    pg_url: str, tmp_path: Path
) -> None:
    """Under PROMETHEUS_MULTIPROC_DIR the sweeper's push sets both gauges: while /hold holds a
    connection for 0.3 s its route and its pool show an age of 0.3 s or more (and less than the
    worker's minute), and both read 0 once the connection is back."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", WORKER, pg_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    held, after = result.stdout.split("AFTER")
    pool = [line for line in held.splitlines() if line.startswith(POOL + "{")]
    assert len(pool) == 1, held  # one pool, one worker (liveall: labelled with its pid)
    series = pool[0].rsplit(" ", 1)[0]
    assert 0.3 <= _value(held, series) < 60
    assert 0.3 <= _value(held, f'{ROUTE}{{route="/hold"}}') < 60
    assert _value(after, series) == 0.0
    assert _value(after, f'{ROUTE}{{route="/hold"}}') == 0.0
