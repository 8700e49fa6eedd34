"""Under PROMETHEUS_MULTIPROC_DIR (where collectors don't run) the held-by-route gauge is a
real livesum gauge set from the checkout stamps by the sweeper's push."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.postgres

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
        release = asyncio.Event()

        @app.get("/hold")
        async def hold() -> int:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                await release.wait()
            return 1

        obs = observer.instrument(app, engine, registry=CollectorRegistry(), metrics_path=None)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            task = asyncio.create_task(http.get("/hold"))
            await asyncio.sleep(0.2)
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


def test_route_connections_held_is_pushed_in_multiprocess_mode(pg_url: str, tmp_path: Path) -> None:
    """A worker holding one connection for /hold shows
    sqlalchemy_route_connections_held{route="/hold"} 1 through the multiprocess files, and 0
    once the request returned it."""
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
    assert 'sqlalchemy_route_connections_held{route="/hold"} 1.0' in held
    assert 'sqlalchemy_route_connections_held{route="/hold"} 0.0' in after
