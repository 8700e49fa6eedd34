"""The chaos suite's target: a small FastAPI app on async SQLAlchemy, run by uvicorn in a
subprocess, with or without the observer (``CHAOS_OBSERVER=1``) and nothing else different.

Environment: ``CHAOS_DATABASE_URL``; ``CHAOS_POOL_SIZE``, ``CHAOS_MAX_OVERFLOW``,
``CHAOS_POOL_TIMEOUT``; ``CHAOS_BREAK_HOOK`` (``checkin``: the observer's checkin hook raises
on every call, to prove the app does not notice).
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations.
import asyncio
import logging
import os
import sys
import traceback
import weakref
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

log = logging.getLogger("chaos.app")


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1  # pragma: no cover


def _break_hooks(which: str) -> None:
    """Make an observer hook raise on every call (before the observer wires it)."""
    from observer.pool._tracker import PoolTracker

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("chaos: injected hook failure")

    if which == "checkin":  # what the checkin listener does with every returned connection
        PoolTracker._returned = broken  # type: ignore[method-assign]
    else:  # pragma: no cover
        raise ValueError(f"unknown CHAOS_BREAK_HOOK {which!r}")


def create() -> FastAPI:
    """The app (``uvicorn --factory tests.chaos.app:create``)."""
    env = os.environ
    engine = create_async_engine(
        env["CHAOS_DATABASE_URL"],
        pool_size=int(env.get("CHAOS_POOL_SIZE", "4")),
        max_overflow=int(env.get("CHAOS_MAX_OVERFLOW", "2")),
        pool_timeout=float(env.get("CHAOS_POOL_TIMEOUT", "5")),
    )
    Session = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI()
    # The driver connections the app opened, held weakly: /admin/state reports how many the
    # driver still sees open, so a test waits until the app has read the end of every backend
    # the server killed before it uses them (tests/helpers/terminate.py says why).
    drivers: weakref.WeakSet[Any] = weakref.WeakSet()

    @event.listens_for(engine.sync_engine, "connect")
    def remember(dbapi_connection: Any, connection_record: Any) -> None:
        drivers.add(dbapi_connection.driver_connection)

    async def error(request: Request, exc: Exception) -> JSONResponse:
        # The error class in the body lets the test compare the two arms; the traceback goes to
        # the log the test scans. Handled here (not by Starlette's outermost error middleware,
        # which re-raises and makes uvicorn drop the keep-alive connection: a racy client error).
        traceback.print_exception(exc, file=sys.stderr)
        orig = getattr(exc, "orig", None)
        detail = type(exc).__name__ + (f"({type(orig).__name__})" if orig is not None else "")
        return JSONResponse({"error": detail}, status_code=500)

    for handled in (SQLAlchemyError, OSError):
        app.add_exception_handler(handled, error)  # type: ignore[arg-type]

    @app.get("/work")
    async def work() -> dict[str, Any]:
        async with Session() as session:
            value = (await session.execute(text("SELECT 1"))).scalar_one()
            await session.commit()
        return {"ok": value}

    @app.get("/sleep")
    async def sleep(seconds: float) -> dict[str, Any]:
        async with Session() as session:
            await session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
        return {"slept": seconds}

    @app.get("/stream")
    async def stream(chunks: int = 20) -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            async with Session() as session:
                for n in range(chunks):
                    await session.execute(text("SELECT pg_sleep(0.05)"))
                    yield f"{n}\n".encode()

        return StreamingResponse(body(), media_type="text/plain")

    @app.post("/admin/dispose")
    async def dispose() -> dict[str, Any]:
        await engine.dispose()
        return {"disposed": True}

    @app.get("/admin/state")
    async def state() -> dict[str, Any]:
        await asyncio.sleep(0)
        pool: Any = engine.pool
        return {
            "pid": os.getpid(),
            "rss_kib": _rss_kib(),
            "checked_out": pool.checkedout(),
            "open_connections": sum(1 for driver in list(drivers) if not driver.is_closed()),
        }

    if env.get("CHAOS_OBSERVER") == "1":
        import observer

        if env.get("CHAOS_BREAK_HOOK"):
            _break_hooks(env["CHAOS_BREAK_HOOK"])
        observer.instrument(
            app, engine, sweep_interval_seconds=0.1, application_name="pool-observer"
        )
    return app
