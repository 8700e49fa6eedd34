"""An instrumented FastAPI app for the end-to-end monitoring test: holds and leaks on demand.

Run as ``python -m tests.monitoring.e2e_app PORT DATABASE_URL``; it serves on 127.0.0.1.
Pool ``main`` is tiny (2 connections, 1 s pool_timeout) so that holders exhaust it; pool
``leaky`` backs the ORM sessions that ``/leak/{n}`` leaves open on purpose.
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


def build(url: str) -> FastAPI:
    """The app, its two watched engines, and routes that hold, leak or behave."""
    main = create_async_engine(url, pool_size=2, max_overflow=0, pool_timeout=1)
    leaky = create_async_engine(url, pool_size=5, max_overflow=5)
    sessions = async_sessionmaker(leaky, expire_on_commit=False)
    leaked: list[AsyncSession] = []  # kept referenced: a request_end leak, not a GC one

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for session in leaked:
            await session.close()
        await main.dispose()
        await leaky.dispose()

    app = FastAPI(lifespan=lifespan)
    # A short leak threshold: a leaked session is reported within seconds even when the
    # request_end check does not catch it.
    obs = observer.instrument(app, registry=CollectorRegistry(), leak_threshold_seconds=3)
    obs.watch(main, name="main")
    obs.watch(leaky, name="leaky")

    @app.get("/hold/{seconds}")
    async def hold(seconds: float) -> dict[str, float]:
        async with main.connect() as connection:
            await connection.execute(text("SELECT 1"))
            await asyncio.sleep(seconds)
        return {"held": seconds}

    @app.get("/leak/{n}")
    async def leak(n: int) -> dict[str, int]:
        session = sessions()
        await session.execute(text("SELECT 1"))
        leaked.append(session)
        return {"leaked": n}

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        async with sessions() as session:
            await session.execute(text("SELECT 1"))
            await session.commit()
        return {"ok": True}

    return app


if __name__ == "__main__":
    port, url = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(build(url), host="127.0.0.1", port=port, log_level="warning")
