"""Double handouts: SQLAlchemy's async race reproduced on real PostgreSQL, detected at the
return with both owners named; a checkout of a record another owner holds; and no false alarm."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.pool import StaticPool
from structlog.testing import capture_logs

from observer.attribution._scope import RequestScope, current_request
from observer.pool._handout import HINT
from observer.sessions._origin import display
from tests.helpers import hook_errors, sample

pytestmark = pytest.mark.postgres

POOL = "pool"
SOURCE = Path(__file__).read_text().splitlines()
SELECT_1 = text("SELECT 1")


def origin(marker: str, function: str) -> str:
    """The origin the observer records for the line of this file that carries ``marker``."""
    line = next(n for n, source in enumerate(SOURCE, 1) if source.endswith(f"# {marker}"))
    return display(__file__, line, function)


class GatedClose(asyncpg.Connection):  # type: ignore[misc]
    """An asyncpg connection whose graceful close waits for :attr:`gate`: the close that
    SQLAlchemy's garbage-collection finalizer awaits then lasts until the waiting request has
    its connection, which makes the race deterministic."""

    gate: asyncio.Event | None = None

    async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 (asyncpg's)
        if GatedClose.gate is not None:
            await GatedClose.gate.wait()
        await super().close(timeout=timeout)


@pytest.fixture
def collector_paused() -> Iterator[None]:
    """Automatic garbage collection off: the test chooses when the leak is collected."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        GatedClose.gate = None


def one_connection_engine(make_engine: Any) -> AsyncEngine:
    engine: AsyncEngine = make_engine(
        pool_size=1, max_overflow=0, pool_timeout=5, connect_args={"connection_class": GatedClose}
    )
    return engine


async def leak_a_session(engine: AsyncEngine) -> None:
    """Request A opens a session, runs a query and drops it unclosed, in a reference cycle
    (only the garbage collector frees it), holding the pool's one connection."""
    current_request.set(RequestScope(route="/a", request_id="req-a"))
    session = AsyncSession(engine)
    await session.execute(SELECT_1)  # origin of A
    session.sync_session.info["cycle"] = session


@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
async def test_the_garbage_collectors_second_return_is_a_double_handout_naming_both_owners(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry, collector_paused: None
) -> None:
    """SQLAlchemy's race (seen on 2.0.38, 2.0.46 and 2.1.9): a leaked async connection collected
    inside a request's greenlet is detached and put back in the pool, then its finalizer awaits
    the close; a waiting request takes the connection; the finalizer resumes and checks it in
    again. The observer counts that return once, names the holder (B) and the leaked checkout
    whose finalizer returned it (A), with routes, request ids and session origins; the next
    request (C) then really gets B's connection, and no observer hook raised."""
    engine = one_connection_engine(make_engine)
    obs = make_observer()
    obs.watch(engine, name=POOL)
    GatedClose.gate = asyncio.Event()
    b_has_it, b_may_leave = asyncio.Event(), asyncio.Event()
    drivers: dict[str, Any] = {}
    txids: dict[str, int] = {}

    async def request_b() -> None:
        current_request.set(RequestScope(route="/b", request_id="req-b"))
        async with AsyncSession(engine) as session:
            await session.execute(SELECT_1)  # origin of B
            drivers["b"] = (await session.connection()).sync_connection.connection.driver_connection
            txids["b"] = (await session.execute(text("SELECT txid_current()"))).scalar_one()
            b_has_it.set()
            assert GatedClose.gate is not None
            GatedClose.gate.set()  # the finalizer's close may finish now
            await b_may_leave.wait()

    await asyncio.create_task(leak_a_session(engine))
    b = asyncio.create_task(request_b())
    for _ in range(50):  # B queues for the pool's one connection
        await asyncio.sleep(0.01)
        if obs._trackers[id(engine.sync_engine)].waiting == 1:
            break
    assert obs._trackers[id(engine.sync_engine)].waiting == 1
    with capture_logs() as logs:
        # request X runs sync-style code in a greenlet (as every AsyncSession call does) and
        # the collector runs there: A's finalizer awaits the close inside X's greenlet
        await AsyncSession(engine).run_sync(lambda _: gc.collect())
        await b_has_it.wait()
        current_request.set(RequestScope(route="/c", request_id="req-c"))
        async with AsyncSession(engine) as session:  # the pool hands C the connection B holds
            drivers["c"] = (await session.connection()).sync_connection.connection.driver_connection
            txids["c"] = (await session.execute(text("SELECT txid_current()"))).scalar_one()
        b_may_leave.set()
        await b
        obs.flush()
    assert drivers["c"] is drivers["b"]
    assert txids["c"] == txids["b"]  # C's statements ran inside B's transaction
    assert sample(registry, "sqlalchemy_pool_double_handouts_total", pool=POOL) == 1.0
    assert sample(registry, "sqlalchemy_pool_connections_reclaimed_total", pool=POOL) == 1.0
    assert sample(registry, "observer_finalizers_off_loop_total", pool=POOL) == 0.0
    assert hook_errors(registry) == 0.0
    [event] = [e for e in logs if e["event"] == "pool.double_handout"]
    held_by, returned_by = event["held_by"], event["returned_by"]
    assert returned_by.pop("held_seconds") > held_by.pop("held_seconds") >= 0  # A came first
    assert held_by == {
        "route": "/b",
        "request_id": "req-b",
        "session_origins": [origin("origin of B", "request_b")],
    }
    assert returned_by == {
        "route": "/a",
        "request_id": "req-a",
        "session_origins": [origin("origin of A", "leak_a_session")],
    }
    assert (event["pool"], event["detected_at"], event["route"], event["request_id"]) == (
        POOL,
        "return",
        "/b",
        "req-b",
    )
    assert (event["hint"], event["suppressed"], event["log_level"]) == (HINT, 0, "warning")
    assert obs._trackers[id(engine.sync_engine)].held == {}


async def test_a_checkout_of_a_connection_another_request_holds_names_both_holders(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """Whatever puts a held connection back in the pool unseen (here the pool's own
    ``_do_return_conn``, which SQLAlchemy's detach uses), the checkout that gets it finds the
    holder's stamp: counted once, logged with the holder (B) and the new holder (C)."""
    engine = make_engine(pool_size=1, max_overflow=0, pool_timeout=5)
    obs = make_observer()
    obs.watch(engine, name=POOL)
    with capture_logs() as logs:
        current_request.set(RequestScope(route="/b", request_id="req-b"))
        async with engine.connect() as b:
            raw = await b.get_raw_connection()
            engine.sync_engine.pool._do_return_conn(raw._connection_record)
            current_request.set(RequestScope(route="/c", request_id="req-c"))
            async with engine.connect() as c:
                assert (await c.get_raw_connection()).driver_connection is raw.driver_connection
        obs.flush()
    assert sample(registry, "sqlalchemy_pool_double_handouts_total", pool=POOL) == 1.0
    assert sample(registry, "sqlalchemy_pool_checkouts_total", pool=POOL) == 2.0
    assert sample(registry, "sqlalchemy_pool_connection_hold_seconds_count", pool=POOL) == 2.0
    assert hook_errors(registry) == 0.0
    [event] = [e for e in logs if e["event"] == "pool.double_handout"]
    assert event["held_by"].pop("held_seconds") >= 0
    assert event["handed_to"].pop("held_seconds") == 0.0
    assert event["held_by"] == {"route": "/b", "request_id": "req-b", "session_origins": []}
    assert event["handed_to"] == {"route": "/c", "request_id": "req-c", "session_origins": []}
    assert (event["detected_at"], event["route"], event["request_id"]) == (
        "checkout",
        "/b",
        "req-b",
    )
    assert obs._trackers[id(engine.sync_engine)].held == {}


@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
async def test_a_reclaim_nobody_raced_and_shared_connections_are_no_double_handout(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry, collector_paused: None
) -> None:
    """A leaked connection collected in a greenlet with no request waiting is reclaimed once
    (the finalizer returns nothing); the reconnect carries its mark to the next ordinary
    return, which stays ordinary. StaticPool hands its one connection to every checkout by
    design: not a double handout either."""
    engine = one_connection_engine(make_engine)
    obs = make_observer()
    obs.watch(engine, name=POOL)
    await asyncio.create_task(leak_a_session(engine))
    await AsyncSession(engine).run_sync(lambda _: gc.collect())
    for _ in range(3):
        async with engine.connect() as conn:
            await conn.execute(SELECT_1)
    shared = create_engine("sqlite://", poolclass=StaticPool)
    obs.watch(shared, name="static")
    with shared.connect() as first, shared.connect() as second:
        assert first.connection.driver_connection is second.connection.driver_connection
    tracker = obs._trackers[id(engine.sync_engine)]
    obs.flush()  # the reclaim is counted by work deferred out of the finalizer
    assert sample(registry, "sqlalchemy_pool_double_handouts_total", pool=POOL) == 0.0
    assert sample(registry, "sqlalchemy_pool_double_handouts_total", pool="static") == 0.0
    assert sample(registry, "sqlalchemy_pool_connections_reclaimed_total", pool=POOL) == 1.0
    assert sample(registry, "sqlalchemy_pool_connection_hold_seconds_count", pool=POOL) == 4.0
    assert hook_errors(registry) == 0.0
    assert (tracker.held, len(tracker._reclaiming)) == ({}, 0)
    obs.unwatch(shared)
    shared.dispose()
