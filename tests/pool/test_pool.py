"""The pool tracker on a real PostgreSQL over asyncpg: exact gauges, counters and histograms."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, Pool, StaticPool
from structlog.testing import capture_logs

from observer import Observer
from tests.helpers import hook_errors, sample
from tests.helpers.terminate import terminate_backend

pytestmark = pytest.mark.postgres

POOL = "pool"


def gauges(registry: CollectorRegistry, pool: str = POOL) -> dict[str, float | None]:
    names = {
        "size": "sqlalchemy_pool_size",
        "max": "sqlalchemy_pool_max_connections",
        "out": "sqlalchemy_pool_checked_out_connections",
        "in": "sqlalchemy_pool_checked_in_connections",
        "overflow": "sqlalchemy_pool_overflow_connections",
        "waiting": "sqlalchemy_pool_waiting_requests",
    }
    return {key: sample(registry, name, pool=pool) for key, name in names.items()}


async def test_concurrent_holders_are_counted_exactly_then_return_to_zero(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """N tasks holding connections show checked_out == N, overflow and waiters beyond the pool;
    once they are done checked_out is 0 and checked_in holds the pooled connections."""
    engine = make_engine(pool_size=3, max_overflow=2, pool_timeout=10)
    obs = make_observer()
    obs.watch(engine, name=POOL)
    release = asyncio.Event()
    five_in = asyncio.Event()
    started = 0

    async def hold() -> None:
        nonlocal started
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            started += 1
            if started == 5:
                five_in.set()
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(7)]
    await asyncio.wait_for(five_in.wait(), timeout=10)
    await asyncio.sleep(0.05)  # the two beyond max_connections are now waiting
    assert gauges(registry) == {
        "size": 3.0,
        "max": 5.0,
        "out": 5.0,
        "in": 0.0,
        "overflow": 2.0,
        "waiting": 2.0,
    }
    release.set()
    await asyncio.gather(*tasks)
    assert gauges(registry) == {
        "size": 3.0,
        "max": 5.0,
        "out": 0.0,
        "in": 3.0,
        "overflow": 0.0,
        "waiting": 0.0,
    }
    assert sample(registry, "sqlalchemy_pool_checkouts_total", pool=POOL) == 7.0
    assert sample(registry, "sqlalchemy_pool_connection_hold_seconds_count", pool=POOL) == 7.0
    assert sample(registry, "sqlalchemy_pool_checkout_duration_seconds_count", pool=POOL) == 7.0
    assert sample(registry, "sqlalchemy_pool_connections_opened_total", pool=POOL) == 5.0
    assert sample(registry, "sqlalchemy_pool_connect_duration_seconds_count", pool=POOL) == 5.0
    obs.flush()  # the sweeper's tick: runs the work deferred out of hooks
    # the two overflow connections were closed when they came back to a full pool
    assert (
        sample(registry, "sqlalchemy_pool_connections_closed_total", pool=POOL, reason="closed")
        == 2.0
    )
    assert hook_errors(registry) == 0.0


async def test_checkout_timeout_is_counted_and_the_app_gets_sqlalchemys_error(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """A checkout that gives up after pool_timeout counts one timeout and lands in the wait
    histogram (above the timeout); the app still gets SQLAlchemy's own TimeoutError."""
    engine = make_engine(pool_size=1, max_overflow=0, pool_timeout=0.2)
    make_observer().watch(engine, name=POOL)
    async with engine.connect():
        with pytest.raises(exc.TimeoutError, match="QueuePool limit of size 1 overflow 0 reached"):
            async with engine.connect():
                pass  # pragma: no cover
        assert gauges(registry)["waiting"] == 0.0
    assert sample(registry, "sqlalchemy_pool_checkout_timeouts_total", pool=POOL) == 1.0
    assert sample(registry, "sqlalchemy_pool_checkouts_total", pool=POOL) == 1.0
    assert sample(registry, "sqlalchemy_pool_checkout_duration_seconds_count", pool=POOL) == 2.0
    bucket = "sqlalchemy_pool_checkout_duration_seconds_bucket"
    assert sample(registry, bucket, pool=POOL, le="0.1") == 1.0  # the quick first checkout
    assert sample(registry, bucket, pool=POOL, le="0.25") == 2.0  # the 0.2 s timeout
    assert gauges(registry)["out"] == 0.0


async def test_cancelled_query_leaves_exact_gauges_and_the_cancellation_unchanged(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """A task cancelled mid-query (a client disconnect) gets CancelledError; the connection is
    invalidated and nothing stays checked out."""
    engine = make_engine(pool_size=2, max_overflow=0)
    obs = make_observer()
    obs.watch(engine, name=POOL)

    async def slow() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_sleep(5)"))

    tasks = [asyncio.create_task(slow()) for _ in range(2)]
    await asyncio.sleep(0.3)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r) for r in results] == [asyncio.CancelledError, asyncio.CancelledError]
    assert gauges(registry)["out"] == 0.0
    assert gauges(registry)["waiting"] == 0.0
    obs.flush()  # the sweeper's tick: runs the work deferred out of hooks
    closed = "sqlalchemy_pool_connections_closed_total"
    assert sample(registry, closed, pool=POOL, reason="invalidated") == 2.0
    assert sample(registry, "sqlalchemy_pool_connection_hold_seconds_count", pool=POOL) == 2.0
    assert hook_errors(registry) == 0.0
    async with engine.connect() as conn:  # the pool still works
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1


async def test_backend_terminated_by_the_server_is_an_invalidation_with_exact_gauges(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """pg_terminate_backend on a held connection: the app's DBAPIError is unchanged, the
    connection is counted invalidated, and the gauges come back to exact values. (The kill
    returns once the client has seen the backend end: tests/helpers/terminate.py.)"""
    engine = make_engine(pool_size=2, max_overflow=0)
    admin = make_engine(poolclass=NullPool)
    obs = make_observer()
    obs.watch(engine, name=POOL)
    async with engine.connect() as conn:
        await terminate_backend(admin, conn)
        with pytest.raises(exc.DBAPIError) as raised:
            await conn.execute(text("SELECT 1"))
        assert raised.value.connection_invalidated is True
        # SQLAlchemy invalidates a disconnected connection and checks it in at once
        assert gauges(registry)["out"] == 0.0
    assert gauges(registry)["out"] == 0.0
    obs.flush()  # the sweeper's tick: runs the work deferred out of hooks
    closed = "sqlalchemy_pool_connections_closed_total"
    assert sample(registry, closed, pool=POOL, reason="invalidated") == 1.0
    assert hook_errors(registry) == 0.0


# Connections returned to a disposed pool stay open in it until it is collected (SQLAlchemy).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_dispose_under_traffic_keeps_counting_on_the_new_pool(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """engine.dispose() swaps the pool while connections are out: they still count as checked
    out until returned, the new pool is measured too, and everything ends at zero."""
    engine = make_engine(pool_size=2, max_overflow=2)
    make_observer().watch(engine, name=POOL)
    release = asyncio.Event()

    async def hold() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(3)]
    await asyncio.sleep(0.2)
    await engine.dispose()
    assert gauges(registry)["out"] == 3.0
    async with engine.connect() as conn:  # from the new pool, through the new wrapper
        await conn.execute(text("SELECT 1"))
        assert gauges(registry)["out"] == 4.0
    release.set()
    await asyncio.gather(*holders)
    assert gauges(registry)["out"] == 0.0
    assert sample(registry, "sqlalchemy_pool_checkouts_total", pool=POOL) == 4.0
    assert sample(registry, "sqlalchemy_pool_connection_hold_seconds_count", pool=POOL) == 4.0
    assert hook_errors(registry) == 0.0


@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_connection_never_returned_is_reclaimed_and_counted(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """A checked-out connection dropped without close(): the garbage collector reclaims it
    (reset, detach, close_detached, no checkin); counted as reclaimed and closed by GC, and
    checked_out is exact (an inc/dec gauge would stay at 1 for ever)."""
    engine = make_engine(pool_size=2, max_overflow=0)
    obs = make_observer()
    obs.watch(engine, name=POOL)
    conn = await engine.connect()
    await conn.execute(text("SELECT 1"))
    assert gauges(registry)["out"] == 1.0
    del conn
    gc.collect()
    assert gauges(registry)["out"] == 0.0
    obs.flush()  # the sweeper's tick: runs the work deferred out of hooks
    assert sample(registry, "sqlalchemy_pool_connections_reclaimed_total", pool=POOL) == 1.0
    closed = "sqlalchemy_pool_connections_closed_total"
    assert sample(registry, closed, pool=POOL, reason="garbage_collected") == 1.0
    assert sample(registry, "sqlalchemy_pool_connection_hold_seconds_count", pool=POOL) == 1.0
    assert hook_errors(registry) == 0.0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_sync_engine_is_watched_too_and_gc_of_a_sync_connection_is_reclaimed(
    pg_sync_url: str, registry: CollectorRegistry
) -> None:
    """A plain Engine (psycopg) reports the same metrics; a sync connection the garbage
    collector returns to the pool is counted as reclaimed, its checkin not as a normal one."""
    engine = create_engine(pg_sync_url, pool_size=2, max_overflow=0)
    obs = Observer(registry=registry)
    try:
        obs.watch(engine, name=POOL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            assert gauges(registry)["out"] == 1.0
        raw = engine.raw_connection()
        assert gauges(registry)["out"] == 1.0
        del raw
        gc.collect()
        assert gauges(registry)["out"] == 0.0
        assert gauges(registry)["in"] == 1.0
        obs.flush()  # the sweeper's tick: runs the work deferred out of hooks
        assert sample(registry, "sqlalchemy_pool_checkouts_total", pool=POOL) == 2.0
        assert sample(registry, "sqlalchemy_pool_connections_reclaimed_total", pool=POOL) == 1.0
        assert sample(registry, "sqlalchemy_pool_connection_hold_seconds_count", pool=POOL) == 2.0
        assert hook_errors(registry) == 0.0
    finally:
        obs.close()
        engine.dispose()


async def test_unbounded_overflow_reports_minus_one_capacity(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """max_overflow=-1: max_connections is -1 and overflow counts what is open beyond the size."""
    engine = make_engine(pool_size=1, max_overflow=-1)
    make_observer().watch(engine, name=POOL)
    async with engine.connect() as a, engine.connect() as b:
        await a.execute(text("SELECT 1"))
        await b.execute(text("SELECT 1"))
        assert gauges(registry) == {
            "size": 1.0,
            "max": -1.0,
            "out": 2.0,
            "in": 0.0,
            "overflow": 1.0,
            "waiting": 0.0,
        }


async def test_null_pool_counts_connections_in_use_and_closes_each(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """NullPool has no size and no limit; connections in use are counted, each is closed on
    return."""
    engine = make_engine(poolclass=NullPool)
    obs = make_observer()
    obs.watch(engine, name=POOL)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        assert gauges(registry) == {
            "size": 0.0,
            "max": -1.0,
            "out": 1.0,
            "in": 0.0,
            "overflow": 0.0,
            "waiting": 0.0,
        }
    assert gauges(registry)["out"] == 0.0
    obs.flush()  # the sweeper's tick: runs the work deferred out of hooks
    closed = "sqlalchemy_pool_connections_closed_total"
    assert sample(registry, closed, pool=POOL, reason="closed") == 1.0
    assert sample(registry, "sqlalchemy_pool_connections_opened_total", pool=POOL) == 1.0


async def test_static_pool_reports_its_one_connection(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """StaticPool shares one connection: idle 1 when nobody uses it, in use 1 while used."""
    engine = make_engine(poolclass=StaticPool)
    make_observer().watch(engine, name=POOL)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        assert gauges(registry)["out"] == 1.0
        assert gauges(registry)["in"] == 0.0
    assert gauges(registry)["out"] == 0.0
    assert gauges(registry)["in"] == 1.0
    assert gauges(registry)["max"] == -1.0


async def test_soft_invalidation_and_detach_are_close_reasons(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """A soft-invalidated connection is closed at its next checkout with that reason; a
    detached one leaves the pool as 'detached'."""
    engine = make_engine(pool_size=2, max_overflow=0)
    obs = make_observer()
    obs.watch(engine, name=POOL)
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        raw.invalidate(soft=True)
    async with engine.connect() as conn:  # recycles the soft-invalidated one
        await conn.execute(text("SELECT 1"))
        raw = await conn.get_raw_connection()
        raw.detach()
    obs.flush()  # the sweeper's tick: runs the work deferred out of hooks
    closed = "sqlalchemy_pool_connections_closed_total"
    assert sample(registry, closed, pool=POOL, reason="soft_invalidated") == 1.0
    assert sample(registry, closed, pool=POOL, reason="detached") == 1.0
    assert gauges(registry)["out"] == 0.0
    assert hook_errors(registry) == 0.0


async def test_a_raising_hook_is_counted_and_the_app_goes_on(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """An exception inside an observer hook never reaches the app: the query succeeds, the
    error is counted under the hook's name, and the pool keeps its slots."""
    engine = make_engine(pool_size=1, max_overflow=0, pool_timeout=1)
    obs = make_observer()
    obs.watch(engine, name=POOL)
    tracker = obs._trackers[id(engine.sync_engine)]

    class Broken(dict[int, Any]):
        def pop(self, *args: object) -> Any:  # only the checkin listener pops
            raise RuntimeError("observer bug")

    tracker.held = Broken()
    with capture_logs() as logs:
        for _ in range(3):  # a checkin listener that raised would leak the one slot
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
        obs.flush()  # the sweeper's tick: runs the work deferred out of hooks
        assert sample(registry, "observer_hook_errors_total", hook="checkin") == 3.0
    assert gauges(registry)["out"] == 0.0
    errors = [e for e in logs if e["event"] == "observer.hook_error"]
    assert len(errors) == 1  # logged once, counted every time
    assert errors[0]["hook"] == "checkin"
    assert errors[0]["error"] == "RuntimeError"


async def test_close_removes_every_listener_and_wrapper(
    make_engine: Any, registry: CollectorRegistry
) -> None:
    """After close() the engine has no observer listener and its pool's connect is SQLAlchemy's
    own again, also after a dispose swapped the pool."""
    engine = make_engine(pool_size=1)
    sync = engine.sync_engine
    before = {
        name: len(getattr(sync.pool.dispatch, name)) for name in ("checkin", "reset", "close")
    }
    obs = Observer(registry=registry)
    obs.watch(engine)
    await engine.dispose()
    async with engine.connect():
        pass
    assert "connect" in sync.pool.__dict__
    assert "_return_conn" in sync.pool.__dict__
    class_level = [(Session, identifier, fn) for identifier, fn in obs.sessions._listeners] + [
        (Pool, "connect", obs.live_pools._on_connect_safely),
        (Engine, "engine_disposed", obs.live_pools._on_disposed_safely),
    ]
    assert all(event.contains(*listener) for listener in class_level)
    obs.close()
    assert not any(event.contains(*listener) for listener in class_level)
    after = {name: len(getattr(sync.pool.dispatch, name)) for name in ("checkin", "reset", "close")}
    assert after == before
    assert "connect" not in sync.pool.__dict__
    assert "_return_conn" not in sync.pool.__dict__
    assert not event.contains(sync, "engine_disposed", obs._trackers.get(id(sync)))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1


async def test_database_down_gives_the_app_its_own_error_and_exact_gauges(
    make_observer: Any, registry: CollectorRegistry
) -> None:
    """With nothing listening on the port, the app gets the driver's connection error
    unchanged; no waiter is left behind and no hook error is counted."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:9/none", pool_timeout=1)
    make_observer().watch(engine, name=POOL)
    try:
        for _ in range(2):
            with pytest.raises(ConnectionRefusedError):
                async with engine.connect():
                    pass  # pragma: no cover
        assert gauges(registry)["waiting"] == 0.0
        assert gauges(registry)["out"] == 0.0
        assert sample(registry, "sqlalchemy_pool_connections_opened_total", pool=POOL) == 0.0
        assert sample(registry, "sqlalchemy_pool_checkouts_total", pool=POOL) == 0.0
        assert hook_errors(registry) == 0.0
    finally:
        await engine.dispose()


async def test_unwatch_stops_counting_and_removes_the_pool_series(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """After unwatch() the engine's checkouts are no longer counted and its series are gone."""
    engine = make_engine()
    obs = make_observer()
    obs.watch(engine, name=POOL)
    async with engine.connect():
        pass
    assert sample(registry, "sqlalchemy_pool_checkouts_total", pool=POOL) == 1.0
    obs.unwatch(engine)
    async with engine.connect():
        pass
    assert sample(registry, "sqlalchemy_pool_checkouts_total", pool=POOL) is None
    assert sample(registry, "sqlalchemy_pool_size", pool=POOL) is None
    assert "connect" not in engine.sync_engine.pool.__dict__


async def test_watching_sends_no_statement_through_the_execution_event_path(
    make_engine: Any, make_observer: Any
) -> None:
    """Watching leaves SQLAlchemy's execution-event flags unset, on the engine and on the Engine
    class: with them set, every statement of every engine pays the event dispatch."""
    engine = make_engine()
    make_observer().watch(engine)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    assert engine.sync_engine._has_events is False
    assert Engine._has_events is False


async def test_an_async_engine_has_no_reset_listener_and_a_sync_engine_has_one(
    make_engine: Any, make_observer: Any, pg_sync_url: str
) -> None:
    """A reset listener costs every checkin ~1 us. Only a sync engine needs one (the garbage
    collector returns a sync connection through reset and checkin); an async one is detached
    from inside SQLAlchemy's _finalize_fairy, which observer._compat.sqlalchemy recognises on the
    stack. Pinned: a SQLAlchemy release without that function fails here, not silently."""
    from observer._compat.sqlalchemy import GC_FINALIZER_FOUND

    assert GC_FINALIZER_FOUND is True
    obs = make_observer()
    engine = make_engine()
    sync = create_engine(pg_sync_url)
    try:
        obs.watch(engine, name="async")
        obs.watch(sync, name="sync")
        async_reset = {
            fn for name, fn in obs._trackers[id(engine.sync_engine)]._listeners if name == "reset"
        }
        sync_reset = {fn for name, fn in obs._trackers[id(sync)]._listeners if name == "reset"}
        assert not async_reset
        assert len(sync_reset) == 1
    finally:
        obs.unwatch(sync)
        sync.dispose()


async def test_counts_are_the_same_with_and_without_batching(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """The hot path sums counts per thread and adds them on flush; if prometheus-client's
    histogram internals ever differ (thread_sums.can_batch), it observes every event instead.
    Both give the same counters, outside a request (route="none") too."""
    engine = make_engine(pool_size=2, max_overflow=0)
    obs = make_observer()
    obs.watch(engine, name=POOL)
    tracker = obs._trackers[id(engine.sync_engine)]
    assert tracker._batched
    for batched in (True, False, True):
        tracker._batched = batched
        for _ in range(3):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    assert sample(registry, "sqlalchemy_pool_checkouts_total", pool=POOL) == 9.0
    assert sample(registry, "sqlalchemy_pool_checkout_duration_seconds_count", pool=POOL) == 9.0
    assert sample(registry, "sqlalchemy_pool_connection_hold_seconds_count", pool=POOL) == 9.0
    assert (
        sample(registry, "sqlalchemy_pool_connection_hold_seconds_bucket", pool=POOL, le="+Inf")
        == 9.0
    )
    assert sample(registry, "sqlalchemy_route_checkouts_total", route="none") == 9.0
    assert hook_errors(registry) == 0.0


async def test_a_pool_without_return_conn_is_watched_through_the_checkin_event(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """Returns are seen by wrapping the private Pool._return_conn (cheaper than a listener). If
    a SQLAlchemy release drops it, the tracker listens to the checkin event instead: the same
    counts either way."""
    from sqlalchemy.pool import AsyncAdaptedQueuePool

    class NoReturnConn(AsyncAdaptedQueuePool):
        def __getattribute__(self, name: str) -> Any:
            if name == "_return_conn":
                raise AttributeError(name)
            return super().__getattribute__(name)

    engine = make_engine(pool_size=2, max_overflow=0)
    sync = engine.sync_engine
    pool = sync.pool
    pool.__class__ = NoReturnConn  # only while watch() looks (SQLAlchemy itself needs it)
    try:
        obs = make_observer()
        obs.watch(engine, name=POOL)
        tracker = obs._trackers[id(sync)]
        assert not tracker._wraps_return
        assert any(name == "checkin" for name, _ in tracker._listeners)
    finally:
        pool.__class__ = AsyncAdaptedQueuePool
    for _ in range(3):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    assert sample(registry, "sqlalchemy_pool_connection_hold_seconds_count", pool=POOL) == 3.0
    assert gauges(registry)["out"] == 0.0
    assert hook_errors(registry) == 0.0
