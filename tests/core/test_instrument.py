"""observer.instrument(app, engine): the one-call setup, through a real FastAPI app."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import observer
from observer import ConfigurationError
from tests.helpers import sample

pytestmark = pytest.mark.postgres

# The metric names dashboards, alerts and users depend on (the contract).
CONTRACT = [
    "sqlalchemy_pool_size",
    "sqlalchemy_pool_max_connections",
    "sqlalchemy_pool_checked_out_connections",
    "sqlalchemy_pool_checked_in_connections",
    "sqlalchemy_pool_overflow_connections",
    "sqlalchemy_pool_waiting_requests",
    "sqlalchemy_pool_checkout_duration_seconds_bucket",
    "sqlalchemy_pool_connection_hold_seconds_bucket",
    "sqlalchemy_pool_connect_duration_seconds_bucket",
    "sqlalchemy_pool_checkouts_total",
    "sqlalchemy_pool_checkout_timeouts_total",
    "sqlalchemy_pool_connections_opened_total",
    "sqlalchemy_pool_connections_closed_total",
    "sqlalchemy_pools",
    "sqlalchemy_orm_sessions_open",
    "sqlalchemy_orm_sessions_opened_total",
    "sqlalchemy_orm_sessions_closed_total",
    "sqlalchemy_orm_session_duration_seconds_bucket",
    "sqlalchemy_orm_session_leaks_total",
    "sqlalchemy_route_connection_hold_seconds_total",
    "sqlalchemy_route_checkout_wait_seconds_total",
    "observer_hook_errors_total",
]


def build_app(engine: AsyncEngine) -> FastAPI:
    app = FastAPI()
    Session = async_sessionmaker(engine, expire_on_commit=False)

    async def session() -> AsyncIterator[AsyncSession]:
        async with Session() as s:
            yield s

    @app.get("/items/{item_id}")
    async def item(item_id: int, s: AsyncSession = Depends(session)) -> dict[str, int]:  # noqa: B008
        value = (await s.execute(text("SELECT CAST(:v AS integer)"), {"v": item_id})).scalar_one()
        return {"id": value}

    return app


async def get(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        return await client.get(path, **kwargs)


async def test_one_call_exports_every_contract_metric_with_values(
    make_engine: Any, registry: CollectorRegistry
) -> None:
    """After instrument(app, engine) and one request, GET /metrics shows every metric of the
    contract, with the request's checkout attributed to its route template."""
    engine = make_engine(pool_size=4, max_overflow=2)
    app = build_app(engine)
    obs = observer.instrument(app, engine, registry=registry)
    try:
        response = await get(app, "/items/7")
        assert response.json() == {"id": 7}
        metrics = await get(app, "/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        body = metrics.text
        missing = [
            name for name in CONTRACT if f"\n{name}" not in body and f"\n{name}{{" not in body
        ]
        assert missing == []
        pool = obs.pool_names[0]
        assert pool == engine.url.render_as_string().replace(
            "postgresql+asyncpg", "postgresql"
        ).replace("postgres@", "")
        assert sample(registry, "sqlalchemy_pool_size", pool=pool) == 4.0
        assert sample(registry, "sqlalchemy_pool_max_connections", pool=pool) == 6.0
        assert sample(registry, "sqlalchemy_pool_checked_out_connections", pool=pool) == 0.0
        assert sample(registry, "sqlalchemy_pool_checkouts_total", pool=pool) == 1.0
        assert sample(registry, "sqlalchemy_route_checkouts_total", route="/items/{item_id}") == 1.0
        assert sample(registry, "sqlalchemy_orm_sessions_opened_total") == 1.0
        assert sample(registry, "sqlalchemy_orm_sessions_open") == 0.0
    finally:
        obs.close()


async def test_metrics_output_passes_promtool_check_metrics(
    make_engine: Any, registry: CollectorRegistry, promtool: str
) -> None:
    """The real /metrics output follows Prometheus' naming rules (promtool check metrics)."""
    engine = make_engine()
    app = build_app(engine)
    obs = observer.instrument(app, engine, registry=registry)
    try:
        await get(app, "/items/1")
        body = (await get(app, "/metrics")).content
        result = await asyncio.to_thread(
            subprocess.run,
            [promtool, "check", "metrics"],
            input=body,
            capture_output=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    finally:
        obs.close()


async def test_openmetrics_is_served_when_asked(
    make_engine: Any, registry: CollectorRegistry
) -> None:
    """A scraper that accepts OpenMetrics gets it (the format that carries exemplars)."""
    engine = make_engine()
    app = build_app(engine)
    obs = observer.instrument(app, engine, registry=registry)
    try:
        response = await get(app, "/metrics", headers={"accept": "application/openmetrics-text"})
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.endswith("# EOF\n")
    finally:
        obs.close()


async def test_instrument_twice_counts_once(make_engine: Any, registry: CollectorRegistry) -> None:
    """Calling instrument() again for the same app, or another app on the same registry, reuses
    the observer: one middleware, one set of listeners, each checkout counted once."""
    engine = make_engine()
    app = build_app(engine)
    first = observer.instrument(app, engine, registry=registry)
    try:
        assert observer.instrument(app, engine, registry=registry) is first
        other = build_app(engine)
        assert observer.instrument(other, engine, registry=registry) is first
        assert sum(1 for m in app.user_middleware if m.cls is observer.ObserverMiddleware) == 1
        await get(app, "/items/1")
        pool = first.pool_names[0]
        assert sample(registry, "sqlalchemy_pool_checkouts_total", pool=pool) == 1.0
        assert first.pool_names == [pool]
    finally:
        first.close()


async def test_metrics_path_none_serves_no_endpoint(
    make_engine: Any, registry: CollectorRegistry
) -> None:
    """metrics_path=None leaves /metrics to the app (here: a 404)."""
    engine = make_engine()
    app = build_app(engine)
    obs = observer.instrument(app, engine, registry=registry, metrics_path=None)
    try:
        assert (await get(app, "/metrics")).status_code == 404
    finally:
        obs.close()


def test_instrument_needs_an_app_it_can_add_middleware_to(registry: CollectorRegistry) -> None:
    """A plain ASGI callable gets an error that says how to wrap it instead."""

    async def plain_asgi(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        pass

    with pytest.raises(ConfigurationError, match=r"app = observer.middleware\(app\)"):
        observer.instrument(plain_asgi, registry=registry)


async def test_observer_middleware_wraps_any_asgi_app(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """Observer.middleware(app) works for a plain ASGI app: requests pass, /metrics is served."""
    engine = make_engine()
    obs = make_observer()
    obs.watch(engine)

    async def plain_asgi(scope: Any, receive: Any, send: Any) -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = obs.middleware(plain_asgi)
    assert (await get(app, "/anything")).status_code == 204
    metrics = await get(app, "/metrics")
    assert 'sqlalchemy_route_checkouts_total{route="unmatched"} 1.0' in metrics.text


# A user's code against the public API: the first block type-checks, each line of the second
# is one error (the line numbers are asserted below).
USER_CODE = """\
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

import observer

app = FastAPI()
engine = create_async_engine("postgresql+asyncpg://app@db/app")
obs = observer.instrument(app, engine, create_engine("sqlite://"), meter_provider=MeterProvider())
obs.watch(engine, name="main")
obs.unwatch(engine)
snap: observer.Snapshot = obs.snapshot()
in_use: int = sum(pool["checked_out"] for pool in snap["pools"])
ages: list[float] = [session["age_seconds"] for session in snap["sessions"]]
wrapped = obs.middleware(app)
traced = observer.Observer(tracer_provider=TracerProvider(), tracing=True)


async def plain(scope: Any, receive: Any, send: Any) -> None: ...


obs.watch("postgresql://app@db/app")
observer.instrument(plain, engine)
snap["pools"][0]["in_use"]
observer.Observer(tracer_provider=MeterProvider())
"""


def test_the_public_signatures_type_check_a_users_code(tmp_path: Path) -> None:
    """mypy --strict accepts the documented uses (an AsyncEngine and an Engine, a FastAPI app,
    OpenTelemetry providers, the typed snapshot) and rejects a URL for an engine, a plain ASGI
    function for instrument(), a key the snapshot does not have, and a provider of the wrong
    kind."""
    (tmp_path / "user.py").write_text(USER_CODE)
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [
            *(sys.executable, "-m", "mypy", "--strict", "--no-incremental"),
            *("--cache-dir", os.devnull, "--no-error-summary", "--hide-error-context", "user.py"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(repo)},
    )
    # "user.py:28: error: Argument 1 to ... [arg-type]" -> ("user.py:28", "arg-type")
    errors = [
        (line.split(": error: ")[0], line.rsplit("[", 1)[-1].rstrip("]"))
        for line in result.stdout.splitlines()
    ]
    assert (errors, result.stderr) == (
        [
            ("user.py:28", "arg-type"),
            ("user.py:29", "arg-type"),
            ("user.py:30", "typeddict-item"),
            ("user.py:31", "arg-type"),
        ],
        "",
    ), result.stdout


def test_a_pool_snapshot_has_every_field_of_the_pool_state() -> None:
    """The snapshot's pool items are the pool's name then every PoolState field, in order (the
    TypedDict is written out, so a new PoolState field must be added to it)."""
    from observer._types import PoolSnapshot
    from observer.pool._tracker import PoolState

    fields = [field.name for field in dataclasses.fields(PoolState)]
    assert list(PoolSnapshot.__annotations__) == ["name", *fields]


def test_snapshot_is_exported_with_its_keys() -> None:
    """``observer.Snapshot`` is public and names the five parts of ``Observer.snapshot()``."""
    parts = ["pools", "live_pools", "sessions", "leaks", "connections"]
    assert "Snapshot" in observer.__all__
    assert list(observer.Snapshot.__annotations__) == parts
    assert observer.Snapshot.__required_keys__ == set(parts)
