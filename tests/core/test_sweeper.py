"""The observer's own threads allocate nothing when idle, so they never set off a garbage
collection; a leaked async connection reclaimed on one of them anyway is counted and logged."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import tracemalloc
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from structlog.testing import capture_logs

import observer
from observer import Observer
from observer._sweeper import Sweeper, observer_thread, on_observer_thread
from tests.helpers import hook_errors, sample

PACKAGE = str(Path(observer.__file__).parent)


def collections_on(thread: Callable[[], int | None], seconds: float) -> int:
    """Young collections started on ``thread`` while this thread sleeps ``seconds``, with the
    collector at its most sensitive: threshold 1 and one tracked object already counted, so
    a single tracked allocation on ``thread`` starts a collection there."""
    started: list[int] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started.append(threading.get_ident())

    thresholds = gc.get_threshold()
    gc.callbacks.append(callback)
    try:
        gc.collect()
        gc.set_threshold(1)
        anchor: list[None] = []  # gen0 count 1
        time.sleep(seconds)
    finally:
        gc.set_threshold(*thresholds)
        gc.callbacks.remove(callback)
    del anchor
    return started.count(thread() or -1)


@pytest.fixture
def untraced() -> Iterator[None]:
    """Coverage measurement paused (under ``scripts/test``'s ``--cov``): its tracer allocates for
    every line any thread runs, which would start collections the observer's code does not."""
    try:
        import coverage
    except ImportError:  # pragma: no cover - coverage is a dev dependency
        yield
        return
    current = coverage.Coverage.current()
    if current is None:
        yield
        return
    current.stop()
    try:
        yield
    finally:
        current.start()


@pytest.fixture
def idle_observer(
    registry: CollectorRegistry, untraced: None
) -> Iterator[tuple[Observer, list[int]]]:
    """An observer watching an engine that is not used, its sweeper ticking every 10 ms (ticks
    counted)."""
    obs = Observer(registry=registry, sweep_interval_seconds=0.01)
    ticks = [0]
    tick = obs._tick

    def counted() -> None:
        tick()
        ticks[0] += 1

    obs._sweeper._tick = counted
    engine = create_engine("sqlite://")
    obs.watch(engine)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    time.sleep(0.05)  # the first ticks drain what the connect deferred
    try:
        yield obs, ticks
    finally:
        obs.close()
        engine.dispose()


def test_an_idle_sweeper_starts_no_collection_over_hundreds_of_ticks(
    idle_observer: tuple[Observer, list[int]],
) -> None:
    """Its wait is a timed lock acquire and an idle tick touches nothing: in 0.5 s (hundreds of
    ticks) not one young collection starts on the sweeper's thread (Event.wait and the flush
    it ran before started one every few ticks)."""
    obs, ticks = idle_observer
    before = ticks[0]
    assert collections_on(lambda: obs._sweeper._thread and obs._sweeper._thread.ident, 2.0) == 0
    assert ticks[0] - before >= 100


def test_an_idle_sweeper_keeps_no_new_memory(idle_observer: tuple[Observer, list[int]]) -> None:
    """Across hundreds of idle ticks, no allocation made by observer code is still alive."""
    _, ticks = idle_observer
    tracemalloc.start()
    try:
        time.sleep(0.05)
        first = tracemalloc.take_snapshot()
        before = ticks[0]
        time.sleep(2.0)
        second = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ours = [tracemalloc.Filter(True, f"{PACKAGE}/*")]
    grown = second.filter_traces(ours).compare_to(first.filter_traces(ours), "lineno")
    assert [(str(s.traceback), s.size_diff) for s in grown if s.size_diff or s.count_diff] == []
    assert ticks[0] - before >= 100


@pytest.mark.usefixtures("untraced")
def test_an_idle_metrics_port_starts_no_collection(registry: CollectorRegistry) -> None:
    """The metrics port waits in select() for a scrape (serve_forever polled every 0.5 s and
    allocated each time): no young collection starts on its thread while idle; it still
    serves a scrape and closes promptly."""
    obs = Observer(registry=registry, metrics_port=0)
    server = obs.metrics_server
    assert server is not None
    try:
        assert collections_on(lambda: server._thread.ident, 1.2) == 0
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:  # loopback
            assert response.status == 200
            assert b"observer_hook_errors_total" in response.read()
    finally:
        started = time.monotonic()
        obs.close()
        assert not server._thread.is_alive()
        assert time.monotonic() - started < 1.0


def test_the_observer_threads_are_known_and_the_sweeper_stops() -> None:
    """Only code inside observer_thread() (the sweeper's loop, the metrics port's) counts as
    the observer's; a stopped sweeper's thread ends and a new start() runs again."""
    seen: list[bool] = []
    sweeper = Sweeper(lambda: seen.append(on_observer_thread()), 0.001)
    sweeper.start()
    time.sleep(0.05)
    sweeper.stop()
    assert not sweeper.running
    count = len(seen)
    time.sleep(0.02)
    assert len(seen) == count >= 5
    assert set(seen) == {True}
    assert on_observer_thread() is False
    with observer_thread():
        assert on_observer_thread() is True
    assert on_observer_thread() is False
    sweeper.start()
    assert sweeper.running
    sweeper.stop()
    sweeper.stop()  # idempotent
    assert not sweeper.running


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
async def test_a_leaked_async_connection_reclaimed_on_the_sweeper_is_counted_and_logged(
    make_engine: Any, registry: CollectorRegistry
) -> None:
    """If a collection runs on the sweeper's thread anyway (here forced: its tick collects) and
    reclaims a leaked async connection, SQLAlchemy's finalizer runs off the event loop there:
    counted in observer_finalizers_off_loop_total and logged, and no hook raised."""
    engine = make_engine(pool_size=1, max_overflow=0)
    obs = Observer(registry=registry, sweep_interval_seconds=0.01)
    collected = threading.Event()
    tick = obs._tick

    def collect_once() -> None:
        if not collected.is_set():
            gc.collect()
            collected.set()
        tick()

    obs._sweeper._tick = collect_once
    gc.disable()  # the test's own collection must not get there first
    try:
        conn = await engine.connect()
        await conn.execute(text("SELECT 1"))
        cycle: list[Any] = [conn]
        cycle.append(cycle)  # only the garbage collector frees it
        del conn, cycle
        with capture_logs() as logs:
            obs.watch(engine, name="pool")  # the sweeper starts with the first engine
            await asyncio.to_thread(collected.wait, 5)
            obs.flush()
        gc.enable()
        assert sample(registry, "observer_finalizers_off_loop_total", pool="pool") == 1.0
        assert sample(registry, "sqlalchemy_pool_connections_reclaimed_total", pool="pool") == 1.0
        assert hook_errors(registry) == 0.0
    finally:
        gc.enable()
        obs.close()
    [event] = [e for e in logs if e["event"] == "pool.finalizer_off_loop"]
    assert (event["pool"], event["route"], event["suppressed"]) == ("pool", None, 0)
