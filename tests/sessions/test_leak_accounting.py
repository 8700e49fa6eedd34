"""Every leak accounted for: a leaked session counts once (what became of it counts apart), the
log's lines add up to the counter within one sweep, and a leak names where its session was
created as well as where its transaction began."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

import observer
from tests.helpers import sample

pytestmark = pytest.mark.postgres

LEAKS = "sqlalchemy_orm_session_leaks_total"
RESOLVED = "sqlalchemy_orm_session_leaks_resolved_total"
HERE = "tests/sessions/test_leak_accounting.py"


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def leaky_app(Session: Callable[[], AsyncSession], kept: list[AsyncSession] | None) -> Any:
    """A raw ASGI app whose /a and /b each open a session, run a statement and return without
    closing it (two origins); ``kept`` keeps the sessions referenced, else they are dropped."""

    async def path_a() -> None:
        session = Session()
        if kept is not None:
            kept.append(session)
        await session.execute(text("SELECT 1"))

    async def path_b() -> None:
        session = Session()
        if kept is not None:
            kept.append(session)
        await session.execute(text("SELECT 2"))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await (path_a if scope["path"] == "/a" else path_b)()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app.lines = {  # type: ignore[attr-defined]
        name: (fn.__code__.co_firstlineno + 1, fn.__code__.co_firstlineno + 4)  # created, began
        for name, fn in (("path_a", path_a), ("path_b", path_b))
    }
    return app


@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_session_that_outlives_its_request_and_is_dropped_counts_as_one_leak(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """A request leaves its session open (request_end), then the session is dropped unclosed:
    one leak (request_end), no garbage_collected leak, and one resolution
    how="garbage_collected" under the same reason and route; the log has one session.leak line
    and one session.released_after_leak line saying how."""
    engine = make_engine(pool_size=2, max_overflow=0)
    obs = observer.Observer(registry=registry, metrics_path=None, request_end_grace_seconds=0)
    obs.watch(engine)
    try:
        with capture_logs() as logs:
            async with client(obs.middleware(leaky_app(async_sessionmaker(engine), None))) as http:
                assert (await http.get("/a")).status_code == 204
            gc.collect()
            obs.flush()
    finally:
        obs.close()
    assert sample(registry, LEAKS, reason="request_end", route="unmatched") == 1.0
    assert sample(registry, LEAKS, reason="garbage_collected", route="unmatched") is None
    assert sample(registry, LEAKS, reason="garbage_collected", route="none") == 0.0
    resolved = {"reason": "request_end", "route": "unmatched"}
    assert sample(registry, RESOLVED, **resolved, how="garbage_collected") == 1.0
    assert sample(registry, RESOLVED, **resolved, how="closed") is None
    sessions = [e for e in logs if e["event"].startswith("session.")]
    assert [(e["event"], e["reason"], e.get("how")) for e in sessions] == [
        ("session.leak", "request_end", None),
        ("session.released_after_leak", "request_end", "garbage_collected"),
    ]


async def test_a_too_old_session_closed_later_counts_once_and_resolves_as_closed(
    make_engine: Callable[..., AsyncEngine], make_observer: Any, registry: CollectorRegistry
) -> None:
    """A session past leak_threshold_seconds is one too_old leak; closing it later is one
    resolution how="closed" (the open-leak arithmetic: leaks minus resolutions is 0 again)."""
    engine = make_engine(pool_size=2)
    obs = make_observer(leak_threshold_seconds=0.1, sweep_interval_seconds=10)
    obs.watch(engine)
    session = AsyncSession(engine)
    await session.execute(text("SELECT 1"))
    await asyncio.sleep(0.15)
    obs.sessions.check_age()
    obs.sessions.check_age()  # found again: still one leak
    assert sample(registry, LEAKS, reason="too_old", route="none") == 1.0
    assert sample(registry, RESOLVED, reason="too_old", route="none", how="closed") == 0.0
    await session.close()
    assert sample(registry, LEAKS, reason="too_old", route="none") == 1.0
    assert sample(registry, RESOLVED, reason="too_old", route="none", how="closed") == 1.0


async def test_a_burst_of_40_leaks_from_two_origins_adds_up_to_40_lines_within_one_sweep(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """20 leaking requests from /a's code, then 20 from /b's, and no traffic after: the 10
    session.leak lines the rate limit allows (/a's first and 9 more), /b's first one (always
    logged), and, within one sweep interval after the burst, session.leak_summary lines per
    origin counting the rest: 11 + 10 + 19 = 40, the counter's value; every line names both
    the line that created the session and the line that began its transaction."""
    interval = 0.5
    engine = make_engine(pool_size=40, max_overflow=0)
    kept: list[AsyncSession] = []
    app = leaky_app(async_sessionmaker(engine), kept)
    obs = observer.Observer(
        registry=registry,
        metrics_path=None,
        request_end_grace_seconds=0,
        sweep_interval_seconds=interval,
    )
    obs.watch(engine)
    try:
        with capture_logs() as logs:
            async with client(obs.middleware(app)) as http:
                for path in ["/a"] * 20 + ["/b"] * 20:
                    assert (await http.get(path)).status_code == 204
            burst_ended = time.monotonic()
            for _ in range(500):  # poll the log for up to 5 s
                if _logged_leaks(logs) >= 40:
                    break
                await asyncio.sleep(0.01)
            took = time.monotonic() - burst_ended
            lines = [dict(e) for e in logs if e["event"].startswith("session.leak")]
        for session in kept:
            await session.close()
    finally:
        obs.close()
    assert sample(registry, LEAKS, reason="request_end", route="unmatched") == 40.0
    assert _logged_leaks(lines) == 40
    assert took < interval + 0.2  # one sweep (plus the tick's own work on a busy machine)
    where = {
        name: (f"{HERE}:{began} in {name}", f"{HERE}:{created} in {name}")
        for name, (created, began) in app.lines.items()
    }
    singles = [(e["origin"], e["created_at"]) for e in lines if e["event"] == "session.leak"]
    assert singles == [where["path_a"]] * 10 + [where["path_b"]]
    # A sweep may run during the burst: an origin's rest can come in more than one summary.
    summed: dict[tuple[str, str, str, str], int] = {}
    for e in lines:
        if e["event"] == "session.leak_summary":
            key = (e["origin"], e["created_at"], e["route"], e["reason"])
            summed[key] = summed.get(key, 0) + e["count"]
    assert summed == {
        (*where["path_a"], "unmatched", "request_end"): 10,
        (*where["path_b"], "unmatched", "request_end"): 19,
    }


def _logged_leaks(logs: list[Any]) -> int:
    """Leaks the log accounts for: one per session.leak line, ``count`` per summary line."""
    return sum(
        1 if e["event"] == "session.leak" else e["count"]
        for e in list(logs)
        if e["event"] in ("session.leak", "session.leak_summary")
    )


async def test_a_leak_names_where_the_session_was_created_when_another_line_began_it(
    make_engine: Callable[..., AsyncEngine], make_observer: Any
) -> None:
    """A session created in one function (a FastAPI-style dependency) and first used in another:
    the too_old leak's origin is the statement's line, created_at the creating line; a session
    created and used on one line has no separate created_at."""
    engine = make_engine(pool_size=3)
    obs = make_observer(leak_threshold_seconds=0.05, sweep_interval_seconds=10)
    obs.watch(engine)

    def dependency() -> AsyncSession:
        return AsyncSession(engine)

    with capture_logs() as logs:
        session = dependency()
        await session.execute(text("SELECT 1"))  # begins in the test
        await (one_line := AsyncSession(engine)).execute(text("SELECT 2"))
        await asyncio.sleep(0.1)
        obs.sessions.check_age()
    await session.close()
    await one_line.close()
    began = _line_of('await session.execute(text("SELECT 1"))  # begins in the test')
    created = dependency.__code__.co_firstlineno + 1
    fn = "test_a_leak_names_where_the_session_was_created_when_another_line_began_it"
    leaks = [(e["origin"], e["created_at"]) for e in logs if e["event"] == "session.leak"]
    assert leaks == [
        (f"{HERE}:{began} in {fn}", f"{HERE}:{created} in dependency"),
        (f"{HERE}:{began + 1} in {fn}", None),
    ]


def _line_of(source: str) -> int:
    """Line number of ``source`` in this file (so the assertions survive edits above it)."""
    with open(__file__) as f:
        for number, line in enumerate(f, start=1):
            if line.strip() == source and "_line_of" not in line:
                return number
    raise AssertionError(source)
