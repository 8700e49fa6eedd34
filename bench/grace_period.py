"""Measure how long after the response ends a FastAPI yield dependency closes its session.

Since FastAPI 0.118 (PRs #14099, #14262) the cleanup of ``yield`` dependencies runs after the
response has been sent. This script serves a real FastAPI app with uvicorn on 127.0.0.1,
sends sequential and concurrent requests over TCP, and records for each request:

- ``body_end``: the last ``http.response.body`` message was handed to the server;
- ``closed``: the dependency's ``finally: await session.close()`` returned;
- ``app_return``: the app call returned to the outermost middleware.

Usage: ``.venv/bin/python bench/grace_period.py [sqlalchemy-url] [--observe]`` (the results
are quoted in docs/logging.md, "Request-end leak check"). With ``--observe`` the app is also
instrumented (default options) and the leak counters are printed: all must be 0.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from collections.abc import AsyncIterator
from contextvars import ContextVar
from time import perf_counter
from typing import Annotated, Any

import httpx
import uvicorn
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

ARGS = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
URL = ARGS[0] if ARGS else "postgresql+asyncpg://postgres@127.0.0.1/postgres"
OBSERVE = "--observe" in sys.argv
engine = create_async_engine(URL, pool_size=20, max_overflow=0)
Session = async_sessionmaker(engine, expire_on_commit=False)
current: ContextVar[dict[str, float]] = ContextVar("marks")
rows: list[dict[str, float]] = []


class Probe:
    """The outermost ASGI middleware: marks the end of the response and of the app call."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        mark: dict[str, float] = {}
        current.set(mark)

        async def wrapped(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                mark["body_end"] = perf_counter()

        try:
            await self.app(scope, receive, wrapped)
        finally:
            mark["app_return"] = perf_counter()
            rows.append(mark)


async def get_session() -> AsyncIterator[AsyncSession]:
    session = Session()
    try:
        yield session
    finally:
        await session.close()
        current.get()["closed"] = perf_counter()


app = FastAPI()


@app.get("/item")
async def item(session: Annotated[AsyncSession, Depends(get_session)]) -> dict[str, int]:
    return {"value": (await session.execute(text("SELECT 1"))).scalar_one()}


def q(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))]


async def main() -> None:
    observed = None
    if OBSERVE:
        from prometheus_client import CollectorRegistry

        import observer

        observed = observer.instrument(app, engine, registry=CollectorRegistry())
    server = uvicorn.Server(
        uvicorn.Config(Probe(app), host="127.0.0.1", port=8765, log_level="error")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(1000):  # uvicorn has no "started" event to await
        if server.started:
            break
        await asyncio.sleep(0.01)
    results: dict[str, list[dict[str, float]]] = {}
    async with httpx.AsyncClient(base_url="http://127.0.0.1:8765") as client:
        for _ in range(50):  # warm up
            await client.get("/item")
        rows.clear()
        for _ in range(1000):
            await client.get("/item")
        results["sequential"] = list(rows)
        rows.clear()
        for _ in range(50):
            await asyncio.gather(*(client.get("/item") for _ in range(20)))
        results["20 concurrent"] = list(rows)
    server.should_exit = True
    await task
    if observed is not None:
        await asyncio.sleep(1.0)  # past the grace period of the last requests
        observed.flush()
        leaks = {
            s.labels["reason"]: s.value
            for metric in observed.registry.collect()
            if metric.name == "sqlalchemy_orm_session_leaks"
            for s in metric.samples
            if s.name.endswith("_total")
        }
        print(f"observed: leaks by reason {leaks or 'none'}")
        observed.close()
    await engine.dispose()
    for label, marks in results.items():
        complete = [m for m in marks if len(m) == 3]
        in_order = sum(m["body_end"] <= m["closed"] <= m["app_return"] for m in complete)
        print(f"{label}: {len(complete)} requests, body_end <= closed <= app_return in {in_order}")
        for name, a, b in (
            ("response end -> session closed", "body_end", "closed"),
            ("session closed -> app returned", "closed", "app_return"),
        ):
            values = sorted((m[b] - m[a]) * 1e6 for m in complete)
            print(
                f"  {name:31s} median {statistics.median(values):7.0f} us"
                f"  p99 {q(values, 0.99):7.0f} us  max {values[-1]:7.0f} us"
            )


if __name__ == "__main__":
    asyncio.run(main())
