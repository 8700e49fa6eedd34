"""The app under load: FastAPI with ``/noop`` and ``/db`` (one ``SELECT 1`` through an
``AsyncSession``), and ``/items/{item_id}`` for the scale run.

The arm comes from ``BENCH_ARM`` (one fresh process per arm), the database from ``BENCH_DSN``:

- ``bare``: nothing added;
- ``observer``: ``observer.instrument(app, engine)`` (middleware, pool and session hooks,
  ``GET /metrics``);
- ``otel``: OpenTelemetry's FastAPI and SQLAlchemy instrumentations (spans to a counting
  exporter, the pool metric to an in-memory reader).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

ARMS = ("bare", "observer", "otel")
SELECT_1 = text("SELECT 1")


def create_app(arm: str, dsn: str, **observer_options: Any) -> tuple[FastAPI, AsyncEngine]:
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; one of {', '.join(ARMS)}")
    engine = create_async_engine(dsn, pool_size=10, max_overflow=10)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

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

        observer.instrument(app, engine, **observer_options)
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
    app, _ = create_app(os.environ.get("BENCH_ARM", "bare"), dsn)
    return app


def __getattr__(name: str) -> Any:  # ``uvicorn bench.app:app`` builds the app on first access
    if name == "app":
        app = _from_env()
        globals()["app"] = app
        return app
    raise AttributeError(name)
