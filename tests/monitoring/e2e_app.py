"""An instrumented FastAPI app for the end-to-end monitoring test: holds and leaks on demand.

Run as ``python -m tests.monitoring.e2e_app PORT DATABASE_URL [APPLICATION_NAME]``; it serves
on 127.0.0.1. Pool ``main`` is tiny (2 connections, 1 s pool_timeout) so that holders exhaust
it; pool ``leaky`` backs the ORM sessions that ``/leak/{n}`` leaves open on purpose: the
middleware's end-of-request check reports each as a ``request_end`` leak of route
``/leak/{n}``, and PostgreSQL shows its connection idle in transaction. Pool ``stuck`` (3
connections, 0.5 s pool_timeout) replays the field test's incident: each ``/login`` leaks a
session that keeps one of its connections, so three of them leave it stuck.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

import observer


def build(url: str, application_name: str = "pool-observer") -> FastAPI:
    """The app, its two watched engines, and routes that hold, leak or behave."""
    main = create_async_engine(url, pool_size=2, max_overflow=0, pool_timeout=1)
    leaky = create_async_engine(url, pool_size=5, max_overflow=5)
    stuck = create_async_engine(url, pool_size=3, max_overflow=0, pool_timeout=0.5)
    sessions = async_sessionmaker(leaky, expire_on_commit=False)
    stuck_sessions = async_sessionmaker(stuck)
    leaked: list[AsyncSession] = []  # kept referenced: a request_end leak, not a GC one

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for session in leaked:
            await session.close()
        await main.dispose()
        await leaky.dispose()
        await stuck.dispose()

    app = FastAPI(lifespan=lifespan)
    # The age threshold is far beyond the test's minute: every leak reported is a request_end
    # one, found by the middleware when the request finished with its session open.
    obs = observer.instrument(
        app,
        registry=CollectorRegistry(),
        leak_threshold_seconds=3600,
        application_name=application_name,
    )
    obs.watch(main, name="main")
    obs.watch(leaky, name="leaky")
    obs.watch(stuck, name="stuck")

    @app.get("/hold/{seconds}")
    async def hold(seconds: float) -> dict[str, float]:
        async with main.connect() as connection:
            await connection.execute(text("SELECT 1"))
            await asyncio.sleep(seconds)
        return {"held": seconds}

    @app.get("/leak/{n}")
    async def leak(n: int) -> dict[str, int]:
        # Opens a transaction and returns without commit or close: a request_end leak.
        session = sessions()
        await session.execute(text("SELECT 1"))
        leaked.append(session)
        return {"leaked": n}

    @app.get("/login")
    async def login() -> dict[str, bool]:
        # The planted bug of the field test: a session that runs a DELETE and is never closed.
        session = stuck_sessions()
        await session.execute(text("DELETE FROM pg_class WHERE false"))
        leaked.append(session)
        return {"ok": True}

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        async with sessions() as session:
            await session.execute(text("SELECT 1"))
            await session.commit()
        return {"ok": True}

    return app


if __name__ == "__main__":
    port, url, *name = sys.argv[1:]
    uvicorn.run(build(url, *name), host="127.0.0.1", port=int(port), log_level="warning")
