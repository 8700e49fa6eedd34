"""Leak origins as a metric: every leak counts once under the app line that began its
transaction, beside the per-route counter and under the same reason, with at most
``max_origins`` lines (then ``other``), in one process or summed over workers."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

import observer
from observer.sessions import _origin
from tests.helpers import sample

pytestmark = pytest.mark.postgres

LEAKS = "sqlalchemy_orm_session_leaks_total"
ORIGINS = "sqlalchemy_orm_session_leak_origins_total"
HERE = "tests/sessions/test_leak_origins.py"
ROOT = Path(__file__).resolve().parents[2]


def origins(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """(origin, reason) -> leaks, for every series of the origin counter with a leak."""
    return {
        (s.labels["origin"], s.labels["reason"]): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == ORIGINS and s.value
    }


def three_lines(Session: Callable[[], AsyncSession], kept: list[AsyncSession]) -> Any:
    """A raw ASGI app whose /a, /b and /c each begin a session's transaction on a line of their
    own and return without closing it (the sessions are kept: request_end leaks)."""

    async def path_a() -> None:
        kept.append(session := Session())
        await session.execute(text("SELECT 1"))

    async def path_b() -> None:
        kept.append(session := Session())
        await session.execute(text("SELECT 2"))

    async def path_c() -> None:
        kept.append(session := Session())
        await session.execute(text("SELECT 3"))

    paths = {"/a": path_a, "/b": path_b, "/c": path_c}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await paths[scope["path"]]()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app.lines = {  # type: ignore[attr-defined]
        path: f"{HERE}:{fn.__code__.co_firstlineno + 2} in {fn.__name__}"
        for path, fn in paths.items()
    }
    return app


async def leak(app: Any, obs: observer.Observer, paths: list[str]) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=obs.middleware(app)), base_url="http://t"
    ) as http:
        for path in paths:
            assert (await http.get(path)).status_code == 204


@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_each_leak_counts_once_under_its_line_and_reason_beside_its_route(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """3 leaks from /a's line and 2 from /b's (request_end), then one of /a's sessions is
    dropped (a resolution, not a new leak), and a session begun here is dropped open
    (garbage_collected): the origin counter has each line under its reason with the route
    counter's totals, and nothing for the dropped request_end leak."""
    engine = make_engine(pool_size=8, max_overflow=0)
    kept: list[AsyncSession] = []
    app = three_lines(async_sessionmaker(engine), kept)
    obs = observer.Observer(registry=registry, metrics_path=None, request_end_grace_seconds=0)
    obs.watch(engine)
    try:
        await leak(app, obs, ["/a", "/b", "/a", "/b", "/a"])
        kept.pop(0)  # one of /a's: already counted as request_end
        dropped = AsyncSession(engine)
        await dropped.execute(text("SELECT 4"))  # the dropped session's line
        del dropped
        gc.collect()
        obs.flush()
        for session in kept:
            await session.close()
    finally:
        obs.close()
    dropped_line = _line_of(
        'await dropped.execute(text("SELECT 4"))  # the dropped session\'s line'
    )
    fn = "test_each_leak_counts_once_under_its_line_and_reason_beside_its_route"
    assert origins(registry) == {
        (app.lines["/a"], "request_end"): 3.0,
        (app.lines["/b"], "request_end"): 2.0,
        (f"{HERE}:{dropped_line} in {fn}", "garbage_collected"): 1.0,
    }
    assert sample(registry, LEAKS, reason="request_end", route="unmatched") == 5.0
    assert sample(registry, LEAKS, reason="garbage_collected", route="none") == 1.0
    assert sample(registry, ORIGINS, origin="unknown", reason="too_old") == 0.0


async def test_lines_beyond_max_origins_count_as_other(
    make_engine: Callable[..., AsyncEngine], make_observer: Any, registry: CollectorRegistry
) -> None:
    """With max_origins=2, the third line to leak counts as ``other``, the first two keep
    their own series; the origin label never holds more than 2 lines (plus other, unknown)."""
    engine = make_engine(pool_size=8, max_overflow=0)
    kept: list[AsyncSession] = []
    app = three_lines(async_sessionmaker(engine), kept)
    obs = make_observer(metrics_path=None, request_end_grace_seconds=0, max_origins=2)
    obs.watch(engine)
    await leak(app, obs, ["/a", "/b", "/c", "/c", "/a", "/b"])
    for session in kept:
        await session.close()
    assert origins(registry) == {
        (app.lines["/a"], "request_end"): 2.0,
        (app.lines["/b"], "request_end"): 2.0,
        ("other", "request_end"): 2.0,
    }
    labels = {
        s.labels["origin"]
        for family in registry.collect()
        for s in family.samples
        if s.name == ORIGINS
    }
    assert labels == {app.lines["/a"], app.lines["/b"], "other", "unknown"}


async def test_without_capture_origin_leaks_count_as_unknown(
    make_engine: Callable[..., AsyncEngine], make_observer: Any, registry: CollectorRegistry
) -> None:
    """capture_origin=False: no line is known, so each leak counts under ``unknown``."""
    engine = make_engine(pool_size=2)
    obs = make_observer(leak_threshold_seconds=0.05, sweep_interval_seconds=10,
                        capture_origin=False)  # fmt: skip
    obs.watch(engine)
    session = AsyncSession(engine)
    await session.execute(text("SELECT 1"))
    await asyncio.sleep(0.1)
    obs.sessions.check_age()
    await session.close()
    assert origins(registry) == {("unknown", "too_old"): 1.0}
    assert sample(registry, LEAKS, reason="too_old", route="none") == 1.0


async def test_the_line_is_formatted_only_when_a_leak_is_counted(
    make_engine: Callable[..., AsyncEngine],
    make_observer: Any,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """50 sessions closed properly format no origin; one too_old leak formats its line once
    for the counter and the log together (the session was created and begun on the same line:
    no separate created_at)."""
    formatted: list[str] = []
    display = _origin._display_path

    def spy(filename: str) -> str:
        formatted.append(filename)
        return display(filename)

    monkeypatch.setattr(_origin, "_display_path", spy)
    engine = make_engine(pool_size=2)
    obs = make_observer(leak_threshold_seconds=0.05, sweep_interval_seconds=10)
    obs.watch(engine)
    for _ in range(50):
        async with AsyncSession(engine) as session:
            await session.execute(text("SELECT 1"))
    assert formatted == []
    await (old := AsyncSession(engine)).execute(text("SELECT 2"))
    await asyncio.sleep(0.1)
    obs.sessions.check_age()
    assert formatted == [__file__]
    assert sum(origins(registry).values()) == 1.0
    await old.close()  # (its session.released_after_leak line names the line again)


def test_workers_leak_origins_add_up_in_the_multiprocess_directory(
    pg_url: str, tmp_path: Path
) -> None:
    """Two worker processes (PROMETHEUS_MULTIPROC_DIR) each leak 2 sessions from one line and
    1 from another: the directory's aggregate counts 4 and 2 under those lines."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    for _ in range(2):
        subprocess.run(
            [sys.executable, "-m", "tests.helpers.mp_leaker", pg_url],
            env=env, cwd=ROOT, check=True, timeout=60,
        )  # fmt: skip
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    worker = "tests/helpers/mp_leaker.py"
    found = origins(registry)
    assert found == {
        (f"{worker}:{_line_in(worker, 'SELECT 1')} in leak_twice", "too_old"): 4.0,
        (f"{worker}:{_line_in(worker, 'SELECT 2')} in leak_once", "too_old"): 2.0,
    }
    assert registry.get_sample_value(LEAKS, {"reason": "too_old", "route": "none"}) == 6.0


def _line_in(relative: str, code: str) -> int:
    lines = (ROOT / relative).read_text().splitlines()
    return next(n for n, line in enumerate(lines, start=1) if code in line)


def _line_of(source: str) -> int:
    """Line number of ``source`` in this file (so the assertions survive edits above it)."""
    with open(__file__) as f:
        for number, line in enumerate(f, start=1):
            if line.strip() == source and "_line_of" not in line:
                return number
    raise AssertionError(source)
