"""The session tracker on a real PostgreSQL: open sessions, durations and leaks with origins."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

from tests.helpers import sample

pytestmark = pytest.mark.postgres


async def test_sessions_are_open_while_they_hold_a_transaction(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """A session is open from its first statement until commit/close; opened, closed and the
    duration histogram count each transaction once; nested savepoints do not count."""
    engine = make_engine(pool_size=2)
    make_observer().watch(engine)
    Session = async_sessionmaker(engine)
    async with Session() as session:
        assert sample(registry, "sqlalchemy_orm_sessions_open") == 0.0  # no transaction yet
        await session.execute(text("SELECT 1"))
        assert sample(registry, "sqlalchemy_orm_sessions_open") == 1.0
        async with session.begin_nested():
            await session.execute(text("SELECT 2"))
        await session.commit()
        assert sample(registry, "sqlalchemy_orm_sessions_open") == 0.0
        await session.execute(text("SELECT 3"))  # a second transaction on the same session
    assert sample(registry, "sqlalchemy_orm_sessions_open") == 0.0
    assert sample(registry, "sqlalchemy_orm_sessions_opened_total") == 2.0
    assert sample(registry, "sqlalchemy_orm_sessions_closed_total") == 2.0
    assert sample(registry, "sqlalchemy_orm_session_duration_seconds_count") == 2.0


async def test_sessions_of_unwatched_engines_are_ignored(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """Only sessions bound to a watched engine are tracked."""
    watched, other = make_engine(), make_engine()
    make_observer().watch(watched)
    async with AsyncSession(other) as session:
        await session.execute(text("SELECT 1"))
        assert sample(registry, "sqlalchemy_orm_sessions_open") == 0.0
    assert sample(registry, "sqlalchemy_orm_sessions_opened_total") == 0.0


@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_session_dropped_without_close_is_a_garbage_collected_leak(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """A session dropped while it holds a transaction counts one garbage_collected leak,
    logged with the app line that began it; the open gauge and the pool come back to 0."""
    engine = make_engine(pool_size=2)
    obs = make_observer()
    obs.watch(engine, name="app")
    with capture_logs() as logs:
        session = AsyncSession(engine)
        await session.execute(text("SELECT 1"))  # the origin
        line = _line_of('await session.execute(text("SELECT 1"))  # the origin')
        del session
        gc.collect()
        obs.flush()  # the sweeper's tick: runs the work deferred out of hooks
        assert sample(registry, "sqlalchemy_orm_sessions_open") == 0.0
    leaks = "sqlalchemy_orm_session_leaks_total"
    assert sample(registry, leaks, reason="garbage_collected", route="none") == 1.0
    assert sample(registry, "sqlalchemy_orm_sessions_closed_total") == 1.0
    assert sample(registry, "sqlalchemy_pool_checked_out_connections", pool="app") == 0.0
    events = [e for e in logs if e["event"] == "session.leak"]
    assert len(events) == 1
    assert events[0]["reason"] == "garbage_collected"
    assert events[0]["route"] == "none"
    assert events[0]["origin"].endswith(f"test_sessions.py:{line} in {_fn()}")


async def test_session_open_too_long_is_a_too_old_leak_reported_once(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """A session holding its transaction past leak_threshold_seconds is reported once as
    too_old by the sweeper, with the test's own line as origin and its age; closing it later
    logs that it was released."""
    engine = make_engine(pool_size=2)
    make_observer(leak_threshold_seconds=0.2, sweep_interval_seconds=0.05).watch(engine)
    with capture_logs() as logs:
        async with AsyncSession(engine) as session:
            await session.execute(text("SELECT 1"))  # too old
            line = _line_of('await session.execute(text("SELECT 1"))  # too old')
            await asyncio.sleep(0.6)
    leaks = "sqlalchemy_orm_session_leaks_total"
    assert sample(registry, leaks, reason="too_old", route="none") == 1.0
    reported = [e for e in logs if e["event"] == "session.leak"]
    assert len(reported) == 1
    assert reported[0]["origin"].endswith(f"test_sessions.py:{line} in {_fn()}")
    assert reported[0]["age_seconds"] >= 0.2
    assert [e["event"] for e in logs if e["event"] == "session.released_after_leak"] == [
        "session.released_after_leak"
    ]


async def test_snapshot_lists_open_sessions_with_origin_and_pool_state(
    make_engine: Any, make_observer: Any
) -> None:
    """snapshot() returns plain data: each pool's numbers and each open session's age and origin."""
    engine = make_engine(pool_size=3, max_overflow=1)
    obs = make_observer()
    obs.watch(engine, name="main")
    async with AsyncSession(engine) as session:
        await session.execute(text("SELECT 1"))
        snap = obs.snapshot()
    assert snap["pools"] == [
        {
            "name": "main",
            "size": 3,
            "max_connections": 4,
            "checked_out": 1,
            "checked_in": 0,
            "overflow": 0,
            "waiting": 0,
        }
    ]
    assert len(snap["sessions"]) == 1
    assert snap["sessions"][0]["route"] == "none"
    assert "test_sessions.py:" in snap["sessions"][0]["origin"]
    assert snap["sessions"][0]["leak"] is None
    assert obs.snapshot()["sessions"] == []


def _line_of(source: str) -> int:
    """Line number of ``source`` in this file (so the assertions survive edits above it)."""
    with open(__file__) as f:
        for number, line in enumerate(f, start=1):
            if line.strip() == source and "_line_of" not in line:
                return number
    raise AssertionError(source)


def _fn() -> str:
    import inspect

    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return frame.f_back.f_code.co_name


async def test_a_failing_session_hook_is_counted_and_never_reaches_the_app(
    make_engine: Any,
    make_observer: Any,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The two session hooks catch their own errors (no guard wrapper on the hot path): a bug
    of ours while a transaction begins or ends loses that session's tracking, is counted in
    observer_hook_errors_total under the hook's name, and the app's session works as usual."""
    from observer.sessions import _origin

    engine = make_engine(pool_size=2)
    obs = make_observer()
    obs.watch(engine)
    Session = async_sessionmaker(engine)

    def broken() -> None:
        raise RuntimeError("a bug of ours")

    with monkeypatch.context() as patch:
        patch.setattr(_origin, "capture", broken)
        async with Session() as session:
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
    with monkeypatch.context() as patch:
        patch.setattr(obs.sessions, "_ended", lambda record, now: broken())
        async with Session() as session:
            assert (await session.execute(text("SELECT 2"))).scalar_one() == 2
    obs.flush()
    errors = "observer_hook_errors_total"
    assert sample(registry, errors, hook="session_begin") == 1.0
    assert sample(registry, errors, hook="session_end") == 1.0
    assert sample(registry, "sqlalchemy_orm_sessions_opened_total") == 1.0  # the second one
    assert sample(registry, "sqlalchemy_orm_sessions_open") == 0.0


def test_an_origin_is_a_code_object_and_a_line_formatted_only_when_shown() -> None:
    """capture() returns (code object, line): no string is built on the hot path; str() gives
    ``file:line in function``, and two captures of the same line are equal."""
    from types import CodeType

    from observer.sessions._origin import capture

    def here() -> Any:
        return capture()

    first, second = here(), here()
    assert first is not None
    code, line = first
    assert isinstance(code, CodeType)
    assert code is here.__code__
    assert first == second
    assert (first.filename, first.lineno, first.function) == (__file__, line, "here")
    assert str(first).endswith(f"test_sessions.py:{line} in here")
