"""Held idle on a real PostgreSQL over asyncpg: time a checked-out connection spends with no
statement running, per route and per checkout, and the ``pool.held_idle`` log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from observer import Observer
from tests.helpers import hook_errors, sample

pytestmark = pytest.mark.postgres

POOL = "pool"
HERE = Path(__file__).name
IDLE = "sqlalchemy_route_connection_idle_seconds_total"
HOLD = "sqlalchemy_route_connection_hold_seconds_total"
GAP = "sqlalchemy_pool_connection_idle_gap_seconds"
SLEEP_LINE: list[int] = []  # the line of the statement that follows the sleep (set below)


def app_with_routes(obs: Observer, engine: Any) -> FastAPI:
    Session = async_sessionmaker(engine, expire_on_commit=False)

    async def session() -> AsyncIterator[AsyncSession]:
        async with Session() as s:
            yield s

    api = FastAPI()

    @api.get("/sleepy/{n}")
    async def sleepy(n: int, s: AsyncSession = Depends(session)) -> int:  # noqa: B008
        await s.execute(text("SELECT 1"))
        await asyncio.sleep(0.3)  # a slow HTTP call, awaited inside the transaction
        value = (await s.execute(text("SELECT CAST(:n AS integer)"), {"n": n})).scalar_one()
        await s.commit()
        return int(value)

    @api.get("/busy/{n}")
    async def busy(n: int, s: AsyncSession = Depends(session)) -> int:  # noqa: B008
        for _ in range(5):
            await s.execute(text("SELECT pg_sleep(0.01)"))
        await s.commit()
        return n

    SLEEP_LINE[:] = [sleepy.__code__.co_firstlineno + 4]  # the decorator line + 4
    return obs.middleware(api)


async def test_a_route_holding_its_transaction_across_a_sleep_counts_the_sleep_as_idle(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """Three requests that sleep 0.3 s between two statements count about 0.9 s idle on their
    route; three that only run statements (five 10 ms queries each) count almost none, though
    they hold their connection about as long per request as a third of the sleepers' hold."""
    engine = make_engine(pool_size=2, max_overflow=0)
    obs = make_observer(idle_gap_log_seconds=None)
    obs.watch(engine, name=POOL)
    transport = httpx.ASGITransport(app=app_with_routes(obs, engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        for n in range(3):
            assert (await client.get(f"/sleepy/{n}")).json() == n
            assert (await client.get(f"/busy/{n}")).json() == n
    obs.flush()
    sleepy_idle = sample(registry, IDLE, route="/sleepy/{n}")
    sleepy_hold = sample(registry, HOLD, route="/sleepy/{n}")
    busy_idle = sample(registry, IDLE, route="/busy/{n}")
    busy_hold = sample(registry, HOLD, route="/busy/{n}")
    assert sleepy_idle is not None
    assert sleepy_hold is not None
    assert busy_idle is not None
    assert busy_hold is not None
    assert 0.9 <= sleepy_idle < 0.9 + 0.15, sleepy_idle
    assert sleepy_idle < sleepy_hold < sleepy_idle + 0.2
    assert busy_hold >= 0.15  # 3 x 5 x 10 ms of pg_sleep at least
    assert busy_idle < 0.05, busy_idle  # only the Python between statements
    assert sample(registry, f"{GAP}_count", pool=POOL) == 6.0
    assert sample(registry, f"{GAP}_bucket", pool=POOL, le="0.25") == 3.0  # the busy ones
    assert sample(registry, f"{GAP}_bucket", pool=POOL, le="0.5") == 6.0
    assert hook_errors(registry) == 0.0


async def test_a_gap_over_the_threshold_logs_the_route_the_session_and_the_line_that_resumed(
    make_engine: Any, make_observer: Any
) -> None:
    """With ``idle_gap_log_seconds=0.2`` the sleeping route logs ``pool.held_idle`` once per
    request, naming the route, the gap, where its session was opened and the app line whose
    statement ended the gap; the busy route logs nothing."""
    engine = make_engine(pool_size=2, max_overflow=0)
    obs = make_observer(idle_gap_log_seconds=0.2)
    obs.watch(engine, name=POOL)
    transport = httpx.ASGITransport(app=app_with_routes(obs, engine))
    with capture_logs() as logs:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for n in range(2):
                assert (await client.get(f"/busy/{n}")).status_code == 200
                assert (await client.get(f"/sleepy/{n}")).status_code == 200
    held = [e for e in logs if e["event"] == "pool.held_idle"]
    assert [e["route"] for e in held] == ["/sleepy/{n}", "/sleepy/{n}"]
    first = held[0]
    assert 0.3 <= first["idle_seconds"] < 0.45
    assert first["ended_by"] == "statement"
    assert first["pool"] == POOL
    assert first["resumed_at"] == f"tests/pool/{HERE}:{SLEEP_LINE[0]} in sleepy"
    assert first["session_origins"]
    assert all(HERE in o for o in first["session_origins"])
    assert first["request_id"]
    assert "before or after the transaction" in first["hint"]


async def give_back(conn: Any) -> None:
    """Return a connection to the pool (the line the log names)."""
    await conn.close()


@pytest.mark.parametrize(
    ("reset_on_return", "ended_by"), [("rollback", "rollback"), (None, "checkin")]
)
async def test_a_gap_before_the_checkin_is_idle_and_logged_at_the_line_that_returned_it(
    make_engine: Any,
    make_observer: Any,
    registry: CollectorRegistry,
    reset_on_return: str | None,
    ended_by: str,
) -> None:
    """Outside requests (route ``none``): a connection that runs one statement, then sleeps,
    then is returned counts the sleep as idle; the log names the line that returned it and the
    step that ended the gap (the pool's reset ROLLBACK, or the checkin without one). A checkout
    that runs nothing is idle all along."""
    engine = make_engine(pool_size=1, max_overflow=0, pool_reset_on_return=reset_on_return)
    obs = make_observer(idle_gap_log_seconds=0.1)
    obs.watch(engine, name=POOL)
    with capture_logs() as logs:
        conn = await engine.connect()
        await conn.execute(text("SELECT 1"))
        await conn.commit()
        await asyncio.sleep(0.2)
        await give_back(conn)
        async with engine.connect():
            await asyncio.sleep(0.05)
    obs.flush()
    idle = sample(registry, IDLE, route="none")
    assert idle is not None
    assert 0.25 <= idle < 0.35, idle
    held = [e for e in logs if e["event"] == "pool.held_idle"]
    assert len(held) == 1
    assert held[0]["ended_by"] == ended_by
    assert held[0]["route"] is None  # outside requests, as in every log of the library
    line = give_back.__code__.co_firstlineno + 2
    assert held[0]["resumed_at"] == f"tests/pool/{HERE}:{line} in give_back"
    assert sample(registry, f"{GAP}_count", pool=POOL) == 2.0


async def test_a_cancelled_statement_ends_its_step_and_the_idle_after_it_counts(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """A statement cancelled mid-way (the client went away) still ends its step: the time after
    it until the checkin is idle, the counts stay exact and no hook error is counted."""
    engine = make_engine(pool_size=1, max_overflow=0)
    obs = make_observer(idle_gap_log_seconds=None)
    obs.watch(engine, name=POOL)

    async def slow() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_sleep(5)"))

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.2)
    tracker = obs._trackers[id(engine.sync_engine)]
    (stamp,) = tracker.held.values()
    assert tracker._idle.activity(stamp, stamp[0] + 10)[0] == "executing"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    obs.flush()
    assert tracker._idle.states == {}
    assert sample(registry, f"{GAP}_count", pool=POOL) == 1.0
    idle = sample(registry, IDLE, route="none")
    assert idle is not None
    assert idle < 0.1
    assert hook_errors(registry) == 0.0


def test_a_sync_engine_is_measured_and_unwatch_restores_the_dialect(
    pg_sync_url: str, registry: CollectorRegistry
) -> None:
    """On a sync engine (psycopg) each statement, COMMIT and ROLLBACK ends a gap; unwatch puts
    the dialect's own methods back: the dialect instance holds none of the observer's."""
    engine = create_engine(pg_sync_url, pool_size=1, max_overflow=0)
    steps = ("do_execute", "do_execute_no_params", "do_executemany", "do_commit", "do_rollback")
    obs = Observer(registry=registry, idle_gap_log_seconds=None)
    try:
        obs.watch(engine, name=POOL)
        assert set(steps) <= set(vars(engine.dialect))
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            conn.commit()
            conn.execute(text("SELECT 1"))
            conn.rollback()
        obs.flush()
        idle = sample(registry, IDLE, route="none")
        assert idle is not None
        assert idle < 0.05
        assert sample(registry, f"{GAP}_count", pool=POOL) == 1.0
        obs.unwatch(engine)
        assert not set(steps) & set(vars(engine.dialect))  # the class's methods again
        assert engine.dialect.do_execute.__func__ is type(engine.dialect).do_execute
    finally:
        obs.close()
        engine.dispose()


async def test_a_raising_idle_step_is_counted_and_the_statement_runs(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """An exception inside the idle measurement never reaches the app: every statement, COMMIT
    and ROLLBACK still runs and returns its result, and each failure is counted under
    ``hook="statement"``."""
    engine = make_engine(pool_size=1, max_overflow=0)
    obs = make_observer(idle_gap_log_seconds=None)
    obs.watch(engine, name=POOL)
    tracker = obs._trackers[id(engine.sync_engine)]

    class Broken(dict[int, Any]):
        def get(self, *args: object) -> Any:
            raise RuntimeError("observer bug")

    tracker._idle.states = Broken()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 41 + 1"))).scalar() == 42
        await conn.commit()
    obs.flush()
    assert sample(registry, "observer_hook_errors_total", hook="statement") == 3.0  # + the reset
    assert sample(registry, f"{GAP}_count", pool=POOL) == 1.0  # the checkin still counted


async def test_close_puts_the_async_engines_dialect_back_and_sets_no_event_flag(
    make_engine: Any, registry: CollectorRegistry
) -> None:
    """Watching an AsyncEngine wraps its sync dialect's steps without setting any
    execution-event flag (statements keep SQLAlchemy's fast path); close() leaves the dialect
    instance with none of the observer's methods, and statements still run."""
    engine = make_engine(pool_size=1, max_overflow=0)
    dialect = engine.sync_engine.dialect
    flag = engine.sync_engine.__dict__.get("_has_events")
    obs = Observer(registry=registry, idle_gap_log_seconds=None)
    obs.watch(engine, name=POOL)
    steps = {"do_execute", "do_execute_no_params", "do_executemany", "do_commit", "do_rollback"}
    assert steps <= set(vars(dialect))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 2"))).scalar() == 2
    assert engine.sync_engine.__dict__.get("_has_events") == flag  # the execution-event flag
    obs.close()
    assert not steps & set(vars(dialect))
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 3"))).scalar() == 3
