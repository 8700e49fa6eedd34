"""OpenTelemetry: query spans and pool events with an in-memory span exporter, the
semantic-convention pool metrics with an InMemoryMetricReader, exemplars in OpenMetrics."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import QueuePool

import observer
from observer._otel import meter_provider_or_none

pytestmark = pytest.mark.postgres

POOL = "main"


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """metric name -> its data points, from one collection."""
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def value(found: dict[str, list[Any]], name: str, **attributes: str) -> Any:
    attributes = {"db.client.connection.pool.name": POOL, **attributes}
    [point] = [p for p in found[name] if dict(p.attributes) == attributes]
    return point


async def test_tracing_adds_query_spans_and_pool_events_to_the_request_span(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """tracing=True: each query is a CLIENT span child of the request's span; the request's
    span gets pool.checkout/pool.checkin events with wait and use time and the request's
    totals as attributes. After close() no more query spans are made."""
    provider, exporter = tracing()
    engine = make_engine(pool_size=2, max_overflow=0)
    Session = async_sessionmaker(engine)
    app = FastAPI()

    @app.get("/two")
    async def two() -> int:
        async with Session() as session:
            await session.execute(text("SELECT 1"))
            await session.execute(text("SELECT 2"))
        return 2

    obs = observer.instrument(
        app, engine, registry=registry, metrics_path=None, tracing=True, tracer_provider=provider
    )
    obs.unwatch(engine)  # unwatch then watch again: the listeners are not doubled
    obs.watch(engine, name=POOL)
    tracer = provider.get_tracer("test")
    listeners = len(engine.sync_engine.dispatch.before_cursor_execute)
    async with client(app) as http:
        with tracer.start_as_current_span("GET /two", kind=SpanKind.SERVER) as server:
            assert (await http.get("/two")).json() == 2
    obs.close()
    assert len(engine.sync_engine.dispatch.before_cursor_execute) == listeners - 1
    async with engine.connect() as conn:  # no longer traced
        await conn.execute(text("SELECT 3"))
    spans = exporter.get_finished_spans()
    queries = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert [s.name.split()[0] for s in queries] == ["SELECT", "SELECT"]
    server_id = server.get_span_context().span_id
    assert all(s.parent is not None and s.parent.span_id == server_id for s in queries)
    [request_span] = [s for s in spans if s.name == "GET /two"]
    events = [(e.name, dict(e.attributes or {})) for e in request_span.events]
    assert [name for name, _ in events] == ["pool.checkout", "pool.checkin"]
    assert events[0][1]["db.client.connection.pool.name"] == POOL
    assert events[0][1]["db.client.connection.wait_time"] >= 0.0
    assert events[1][1]["db.client.connection.use_time"] > 0.0
    attributes = dict(request_span.attributes or {})
    assert attributes["pool_observer.checkouts"] == 1
    assert attributes["pool_observer.sessions_opened"] == 1
    assert attributes["pool_observer.hold_seconds"] == pytest.approx(
        events[1][1]["db.client.connection.use_time"], abs=0.01
    )


async def test_semconv_pool_metrics_have_exact_values(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """With a MeterProvider: connection count by state, max, idle.max and pending requests
    read from the pool; create/wait/use histograms and the timeout counter fed by the hooks."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    engine = make_engine(pool_size=2, max_overflow=1, pool_timeout=0.2)
    obs = observer.Observer(registry=registry, meter_provider=meter_provider)
    obs.watch(engine, name=POOL)
    try:
        async with engine.connect() as a, engine.connect() as b, engine.connect() as c:
            for conn in (a, b, c):
                await conn.execute(text("SELECT 1"))
            with pytest.raises(exc.TimeoutError):
                async with engine.connect():
                    pass  # pragma: no cover
            busy = points(reader)
        idle = points(reader)
    finally:
        obs.close()
        meter_provider.shutdown()
    count = "db.client.connection.count"
    assert value(busy, count, **{"db.client.connection.state": "used"}).value == 3
    assert value(busy, count, **{"db.client.connection.state": "idle"}).value == 0
    assert value(busy, "db.client.connection.max").value == 3
    assert value(busy, "db.client.connection.idle.max").value == 2
    assert value(busy, "db.client.connection.pending_requests").value == 0
    assert value(busy, "db.client.connection.timeouts").value == 1
    assert value(busy, "db.client.connection.create_time").count == 3
    wait = value(busy, "db.client.connection.wait_time")
    assert wait.count == 4  # three checkouts and the timeout
    assert wait.max >= 0.2
    assert "db.client.connection.use_time" not in busy  # nothing returned yet
    # all three came back: the overflow one was closed, two idle stay in the pool
    assert value(idle, count, **{"db.client.connection.state": "used"}).value == 0
    assert value(idle, count, **{"db.client.connection.state": "idle"}).value == 2
    assert value(idle, "db.client.connection.use_time").count == 3


async def test_pending_requests_counts_waiters(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """Two tasks waiting for the only connection show db.client.connection.pending_requests 2."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    engine = make_engine(pool_size=1, max_overflow=0, pool_timeout=5)
    obs = observer.Observer(registry=registry, meter_provider=meter_provider)
    obs.watch(engine, name=POOL)

    async def use() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            waiters = [asyncio.create_task(use()) for _ in range(2)]
            await asyncio.sleep(0.1)
            found = points(reader)
        await asyncio.gather(*waiters)
    finally:
        obs.close()
        meter_provider.shutdown()
    assert value(found, "db.client.connection.pending_requests").value == 2


def test_global_meter_provider_is_used_only_when_configured() -> None:
    """Without an argument the global MeterProvider is used only when the app set one (the
    default proxy means 'not configured'); an argument is always used."""
    given = MeterProvider()
    assert meter_provider_or_none(given) is given
    assert meter_provider_or_none(None) is None
    given.shutdown()


async def test_histograms_carry_trace_exemplars_in_openmetrics(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """With tracing on, a checkout inside a span puts that span's trace id as an exemplar on
    the wait and hold histograms of the OpenMetrics exposition."""
    provider, _ = tracing()
    engine = make_engine(pool_size=1, max_overflow=0)
    obs = observer.Observer(registry=registry, tracing=True, tracer_provider=provider)
    obs.watch(engine, name=POOL)
    try:
        with provider.get_tracer("test").start_as_current_span("job") as span:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        exposition = generate_latest(registry).decode()
    finally:
        obs.close()
    trace_id = format(span.get_span_context().trace_id, "032x")
    lines = [line for line in exposition.splitlines() if f'trace_id="{trace_id}"' in line]
    assert {line.split("{")[0] for line in lines} == {
        "sqlalchemy_pool_checkout_duration_seconds_bucket",
        "sqlalchemy_pool_connection_hold_seconds_bucket",
    }


async def test_tracing_off_adds_no_listener_and_no_span(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """By default nothing OpenTelemetry is wired: no cursor listeners, no exemplars."""
    engine = make_engine()
    before = len(engine.sync_engine.dispatch.before_cursor_execute)
    obs = observer.Observer(registry=registry)
    obs.watch(engine, name=POOL)
    try:
        assert len(engine.sync_engine.dispatch.before_cursor_execute) == before
        assert not event.contains(engine.sync_engine, "before_cursor_execute", print)
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        assert "trace_id" not in generate_latest(registry).decode()
    finally:
        obs.close()


def _query_span_listeners() -> int:
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    from observer._compat.otel import engine_tracer_listeners

    return len(engine_tracer_listeners(EngineTracer))


async def test_tracing_holds_a_watched_engine_weakly(
    pg_url: str, registry: CollectorRegistry
) -> None:
    """With tracing on, a watched engine, sync or async, is still held weakly: the app drops
    its last reference (no dispose, no unwatch) and the engine is freed, with its query-span
    listeners; the observer forgets the pool, and drops its QuerySpans, at the next flush."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    from observer._otel import QuerySpans

    def tracers() -> int:
        return sum(1 for o in gc.get_objects() if type(o) in (QuerySpans, EngineTracer))

    provider, exporter = tracing()
    obs = observer.Observer(registry=registry, tracing=True, tracer_provider=provider)
    before, tracers_before = _query_span_listeners(), tracers()
    try:
        sync_engine = create_engine("sqlite://", poolclass=QueuePool)
        async_engine = create_async_engine(pg_url)
        obs.watch(sync_engine, name="sync")
        obs.watch(async_engine, name="async")
        with sync_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        async with async_engine.connect() as aconn:
            await aconn.execute(text("SELECT 2"))
        await async_engine.dispose()  # closes the asyncpg connections inside this event loop
        statements = [s.attributes.get("db.statement") for s in exporter.get_finished_spans()]
        assert statements == ["SELECT 1", "SELECT 2"]
        assert _query_span_listeners() == before + 14  # 7 per engine
        assert tracers() == tracers_before + 4  # a QuerySpans and its EngineTracer per engine
        gone = [weakref.ref(e) for e in (sync_engine, async_engine, async_engine.sync_engine)]
        del sync_engine, async_engine, conn, aconn
        gc.collect()
        assert [ref() for ref in gone] == [None, None, None]
        assert _query_span_listeners() == before
        obs.flush()
        assert obs.pool_names == []
        assert tracers() == tracers_before
    finally:
        obs.close()
