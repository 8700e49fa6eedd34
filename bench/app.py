"""The app under load: FastAPI with ``/noop`` and ``/db`` (one ``SELECT 1`` through an
``AsyncSession``), and ``/items/{item_id}`` for the scale run.

The arm comes from ``BENCH_ARM`` (one fresh process per arm), the database from ``BENCH_DSN``:

- ``bare``: nothing added;
- ``observer``: ``observer.instrument(app, engine)`` (middleware, pool and session hooks,
  ``GET /metrics``);
- ``otel``: OpenTelemetry's FastAPI and SQLAlchemy instrumentations (spans to a counting
  exporter, the pool metric to an in-memory reader);
- ``passthrough``: :class:`PassThrough`, the thinnest middleware that still watches the
  response: what any pure ASGI middleware costs at least (the floor the observer's is read
  against);
- ``scopevar``: the same, plus a contextvar set to the ASGI scope for the request (what the
  observer's middleware did until the fix of bench/README.md, "The HTTP gap"): the cause of the
  gap, reproduced without the observer.

``BENCH_OBSERVER_OPTIONS`` (JSON) adds keyword arguments to ``instrument()``: an arm for one
feature's cost. Every arm serves ``GET /_bench/stats`` (see :class:`Stats`): the process's CPU
time and its garbage collections, read before and after each measured run.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import json
import os
import resource
from collections.abc import Iterator
from time import thread_time
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

ARMS = ("bare", "observer", "otel", "passthrough", "scopevar")
ABLATIONS = {
    "idle": "held-idle measurement (the dialect's execute, commit and rollback not wrapped)",
    "sessions": "session tracking (no Session listeners, no origins)",
    "middleware": "the middleware (requests not attributed: work counts under route none)",
}
"""Parts of the observer a benchmark arm can leave out (not options: a user cannot turn these
off). Only to split the observer's cost by part."""
STATS_PATH = "/_bench/stats"


class Stats:
    """What the server process spent: CPU time (all threads) and, per generation, the
    garbage collections and the CPU seconds they took (a ``gc.callbacks`` hook, in every arm;
    thread CPU time, not wall time: with every arm's server on one core, a collection's wall
    time also counts the other servers' turns)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.gc_seconds = 0.0
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = thread_time()
        else:
            self.gc_seconds += thread_time() - self._started
            self.collections[info["generation"]] += 1

    def read(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "collections": list(self.collections),
            "gc_seconds": self.gc_seconds,
        }


class PassThrough:
    """A pure ASGI middleware that wraps ``send`` in a slotted callable noting the response's
    status, and does nothing else."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _Send(send))


class _Send:
    __slots__ = ("send", "status")

    def __init__(self, send: Any) -> None:
        self.send = send
        self.status = 0

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


_request_scope: contextvars.ContextVar[Any] = contextvars.ContextVar("bench_scope")


class ScopeVar(PassThrough):
    """:class:`PassThrough` that also sets a contextvar to the request's ASGI scope (reset at
    the end, as the observer's middleware did): a keep-alive timer the server schedules inside
    the last ``send`` captures the context, and with it the scope, for seconds."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _request_scope.set(scope)
        try:
            await self.app(scope, receive, _Send(send))
        finally:
            _request_scope.reset(token)


@contextlib.contextmanager
def ablated(parts: tuple[str, ...]) -> Iterator[None]:
    """While ``instrument()`` runs: the parts in ``parts`` are not attached."""
    unknown = set(parts) - set(ABLATIONS)
    if unknown:
        raise ValueError(f"unknown ablation {sorted(unknown)}; one of {', '.join(ABLATIONS)}")
    from observer.pool._idle import IdleWatch
    from observer.sessions._tracker import SessionTracker

    saved = IdleWatch.attach, SessionTracker.listen
    if "idle" in parts:
        IdleWatch.attach = lambda self, dialect: None  # type: ignore[method-assign]
    if "sessions" in parts:
        SessionTracker.listen = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        IdleWatch.attach, SessionTracker.listen = saved  # type: ignore[method-assign]


SELECT_1 = text("SELECT 1")


def create_app(
    arm: str, dsn: str, ablate: tuple[str, ...] = (), **observer_options: Any
) -> tuple[FastAPI, AsyncEngine]:
    """The bench app of ``arm``; ``ablate`` (observer arm only): parts of the observer left out,
    to measure each part's share of its cost (:data:`ABLATIONS`)."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; one of {', '.join(ARMS)}")
    # BENCH_POOL="size,overflow": the e2e run keeps it small (every arm's server at once must
    # fit in PostgreSQL's max_connections next to whatever else the machine runs)
    size, overflow = (int(x) for x in os.environ.get("BENCH_POOL", "10,10").split(","))
    engine = create_async_engine(dsn, pool_size=size, max_overflow=overflow)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    stats = Stats()

    @app.get(STATS_PATH)
    async def read_stats(settle: bool = False) -> dict[str, Any]:
        if settle:  # a full collection now: no arm pays its import-time heap's first one later
            gc.collect()
        return stats.read()

    @app.get("/noop", response_class=PlainTextResponse)
    async def noop() -> str:
        return "ok"

    @app.get("/db", response_class=PlainTextResponse)
    async def db() -> str:
        async with sessions() as session:
            value = (await session.execute(SELECT_1)).scalar_one()
        return str(value)

    @app.get("/items/{item_id}", response_class=PlainTextResponse)
    async def item(item_id: int) -> str:
        async with sessions() as session:
            value = (await session.execute(SELECT_1)).scalar_one()
        return str(item_id + value)

    if arm == "observer":
        import observer

        with ablated(ablate):
            observer.instrument(app, engine, **observer_options)
        if "middleware" in ablate:  # the engine watched, the requests not
            app.user_middleware.clear()
    elif arm == "passthrough":
        app.add_middleware(PassThrough)
    elif arm == "scopevar":
        app.add_middleware(ScopeVar)
    elif arm == "otel":
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        from bench.otel import OTel

        otel = OTel()
        otel.instrument_sqlalchemy(engine.sync_engine)
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
        )
        app.state.otel = otel
    return app, engine


def _from_env() -> FastAPI:
    dsn = os.environ.get("BENCH_DSN")
    if not dsn:
        raise RuntimeError("BENCH_DSN is not set (python -m bench sets it)")
    options = json.loads(os.environ.get("BENCH_OBSERVER_OPTIONS") or "{}")
    ablate = tuple(p for p in os.environ.get("BENCH_ABLATE", "").split(",") if p)
    app, _ = create_app(os.environ.get("BENCH_ARM", "bare"), dsn, ablate, **options)
    return app


def __getattr__(name: str) -> Any:  # ``uvicorn bench.app:app`` builds the app on first access
    if name == "app":
        app = _from_env()
        globals()["app"] = app
        return app
    raise AttributeError(name)
