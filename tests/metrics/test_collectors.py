"""Reading the registry: side-effect free, the same in a filtered and a full scrape, exact."""

from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import QueuePool

from observer.attribution._scope import RequestScope

POOL = "db"
SLOW = 3600.0  # sweep interval: no sweeper tick moves anything while a test runs

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# Every sample of the families the hot path sums per thread (observer/metrics/_batching.py).
BATCHED = [
    "sqlalchemy_pool_checkouts_total",
    "sqlalchemy_pool_checkout_duration_seconds_bucket",
    "sqlalchemy_pool_checkout_duration_seconds_count",
    "sqlalchemy_pool_checkout_duration_seconds_sum",
    "sqlalchemy_pool_connection_hold_seconds_bucket",
    "sqlalchemy_pool_connection_hold_seconds_count",
    "sqlalchemy_pool_connection_hold_seconds_sum",
    "sqlalchemy_orm_sessions_opened_total",
    "sqlalchemy_orm_sessions_closed_total",
    "sqlalchemy_orm_session_duration_seconds_bucket",
    "sqlalchemy_orm_session_duration_seconds_count",
    "sqlalchemy_orm_session_duration_seconds_sum",
    "sqlalchemy_route_checkouts_total",
    "sqlalchemy_route_checkout_wait_seconds_total",
    "sqlalchemy_route_connection_hold_seconds_total",
    "sqlalchemy_route_requests_total",
]


def read(registry: CollectorRegistry, names: list[str] | None = None) -> Samples:
    """One scrape (``names``: what ``/metrics?name[]=...`` asks for), without ``_created``."""
    source: Any = registry if names is None else registry.restricted_registry(names)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(source).decode())
        for s in family.samples
        if not s.name.endswith("_created")
    }


def only(samples: Samples, names: list[str]) -> Samples:
    return {key: value for key, value in samples.items() if key[0] in names}


def held_by_prometheus_client(family: Any, suffix: str) -> dict[tuple[str, ...], float]:
    """What a prometheus-client family holds itself (its own collect(), not the registry's)."""
    return {
        tuple(s.labels.values()): s.value
        for metric in family.collect()
        for s in metric.samples
        if s.name.endswith(suffix)
    }


async def work(engine: Any, obs: Any) -> None:
    """5 checkouts outside requests, 3 ORM sessions (one checkout each), one finished request."""
    for _ in range(5):
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    for _ in range(3):
        async with AsyncSession(engine) as session, session.begin():
            await session.execute(text("SELECT 1"))
    obs.routes.finish(RequestScope(route="/a", checkouts=2, wait_seconds=0.5, hold_seconds=1.5))


def assert_exact(samples: Samples) -> None:
    pool = (("pool", POOL),)
    assert samples[("sqlalchemy_pool_checkouts_total", pool)] == 8.0
    assert samples[("sqlalchemy_pool_checkout_duration_seconds_count", pool)] == 8.0
    assert samples[("sqlalchemy_pool_connection_hold_seconds_count", pool)] == 8.0
    inf = (("le", "+Inf"), ("pool", POOL))
    assert samples[("sqlalchemy_pool_connection_hold_seconds_bucket", inf)] == 8.0
    assert samples[("sqlalchemy_orm_sessions_opened_total", ())] == 3.0
    assert samples[("sqlalchemy_orm_sessions_closed_total", ())] == 3.0
    assert samples[("sqlalchemy_orm_session_duration_seconds_count", ())] == 3.0
    assert samples[("sqlalchemy_route_checkouts_total", (("route", "none"),))] == 8.0
    assert samples[("sqlalchemy_route_checkouts_total", (("route", "/a"),))] == 2.0
    assert samples[("sqlalchemy_route_requests_total", (("route", "/a"),))] == 1.0
    assert samples[("sqlalchemy_route_checkout_wait_seconds_total", (("route", "/a"),))] == 0.5
    assert samples[("sqlalchemy_route_connection_hold_seconds_total", (("route", "/a"),))] == 1.5


async def test_a_filtered_scrape_shows_what_a_full_one_shows_whichever_comes_first(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """``/metrics?name[]=...`` (restricted_registry) calls only the collectors of the names
    asked for; it shows the same batched counts as a full scrape, read before or after it."""
    engine = make_engine(pool_size=2, max_overflow=0)
    obs = make_observer(sweep_interval_seconds=SLOW)
    obs.watch(engine, name=POOL)
    await work(engine, obs)
    filtered_first = read(registry, BATCHED)
    full = only(read(registry), BATCHED)
    filtered_after = read(registry, BATCHED)
    assert_exact(filtered_first)
    assert filtered_first == full
    assert filtered_after == full
    one = ["sqlalchemy_orm_sessions_opened_total"]
    assert read(registry, one) == {("sqlalchemy_orm_sessions_opened_total", ()): 3.0}


async def test_reading_twice_moves_nothing_and_the_next_flush_counts_everything_once(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """A scrape neither moves the per-thread sums into prometheus-client nor runs deferred work:
    two scrapes in a row show the same values and leave prometheus-client's own values and the
    deferred queue as they were. flush() (the sweeper's tick) then moves the sums, and the
    scrape still shows each count exactly once; the closes deferred out of hooks show then."""
    engine = make_engine(pool_size=2, max_overflow=0)
    obs = make_observer(sweep_interval_seconds=SLOW)
    obs.watch(engine, name=POOL)
    await work(engine, obs)
    await engine.dispose()  # closes the idle connection: counted by deferred work
    pending = len(obs.hooks.pending)
    assert pending > 0
    first, second = read(registry), read(registry)
    assert first == second
    assert_exact(first)
    assert held_by_prometheus_client(obs.metrics.checkouts, "_total") == {(POOL,): 0.0}
    assert held_by_prometheus_client(obs.metrics.sessions_opened, "_total") == {(): 0.0}
    assert held_by_prometheus_client(obs.metrics.route_requests, "_total") == {
        ("none",): 0.0,
        ("/a",): 0.0,
    }
    assert len(obs.hooks.pending) == pending
    closed = ("sqlalchemy_pool_connections_closed_total", (("pool", POOL), ("reason", "closed")))
    assert first[closed] == 0.0

    obs.flush()
    obs.flush()
    assert held_by_prometheus_client(obs.metrics.checkouts, "_total") == {(POOL,): 8.0}
    assert held_by_prometheus_client(obs.metrics.sessions_opened, "_total") == {(): 3.0}
    after = read(registry)
    assert_exact(after)
    assert after[closed] == 1.0
    assert only(after, BATCHED) == only(first, BATCHED)


async def test_values_do_not_depend_on_the_order_the_collectors_were_registered(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """The observer's collectors registered in reverse order (as if the app's own collectors
    and ours were interleaved differently): the first full scrape is already exact."""
    obs = make_observer(sweep_interval_seconds=SLOW)
    collectors = list(registry._collector_to_names)  # the registry lists them nowhere public
    for collector in collectors:
        registry.unregister(collector)
    for collector in reversed(collectors):
        registry.register(collector)
    engine = make_engine(pool_size=2, max_overflow=0)
    obs.watch(engine, name=POOL)
    await work(engine, obs)
    assert_exact(read(registry))


def test_a_scrape_during_a_flush_sees_every_count_once(
    make_observer: Any, registry: CollectorRegistry, tmp_path: Any, monkeypatch: Any
) -> None:
    """A scrape that starts while the sweeper is moving the sums into prometheus-client (taken
    from the threads, not yet added to the counter) waits for the move: it neither misses the
    counts in flight nor sees them twice."""
    engine = create_engine(f"sqlite:///{tmp_path}/db.sqlite", poolclass=QueuePool)
    obs = make_observer(sweep_interval_seconds=SLOW)
    obs.watch(engine, name=POOL)
    for _ in range(4):
        engine.raw_connection().close()
    child = obs._trackers[id(engine)]._m.checkouts
    moving = threading.Event()
    real_inc = child.inc

    def slow_inc(amount: float = 1) -> None:
        moving.set()
        time.sleep(0.3)  # the sums are taken from the threads and not in the counter yet
        real_inc(amount)

    monkeypatch.setattr(child, "inc", slow_inc)
    flusher = threading.Thread(target=obs.flush)
    flusher.start()
    try:
        assert moving.wait(5)
        during = read(registry, ["sqlalchemy_pool_checkouts_total"])
    finally:
        flusher.join()
    after = read(registry, ["sqlalchemy_pool_checkouts_total"])
    key = ("sqlalchemy_pool_checkouts_total", (("pool", POOL),))
    assert during == {key: 4.0}
    assert after == {key: 4.0}
    engine.dispose()


def test_concurrent_checkouts_flushes_and_scrapes_never_go_back_and_end_exact(
    make_observer: Any, registry: CollectorRegistry, tmp_path: Any
) -> None:
    """Four threads check out while another flushes in a loop and the test scrapes in a loop:
    every scrape shows at least what the one before showed (a counter that goes back is a reset
    to Prometheus), and once the threads are done the scrape is exact, before and after a flush."""
    engine = create_engine(
        f"sqlite:///{tmp_path}/db.sqlite", poolclass=QueuePool, pool_size=4, max_overflow=0
    )
    obs = make_observer(sweep_interval_seconds=SLOW)
    obs.watch(engine, name=POOL)
    done = threading.Event()

    def check_out() -> None:
        for _ in range(3000):
            engine.raw_connection().close()

    def flush() -> None:
        while not done.is_set():
            obs.flush()

    names = ["sqlalchemy_pool_checkouts_total", "sqlalchemy_pool_connection_hold_seconds_count"]
    keys = [(name, (("pool", POOL),)) for name in names]
    writers = [threading.Thread(target=check_out) for _ in range(4)]
    flusher = threading.Thread(target=flush)
    for thread in [*writers, flusher]:
        thread.start()
    seen = [0.0, 0.0]
    try:
        while any(thread.is_alive() for thread in writers):
            samples = read(registry, names)
            now = [samples[key] for key in keys]
            assert now[0] >= seen[0], (seen, now)
            assert now[1] >= seen[1], (seen, now)
            seen = now
    finally:
        for thread in writers:
            thread.join()
        done.set()
        flusher.join()
    assert [read(registry, names)[key] for key in keys] == [12000.0, 12000.0]
    obs.flush()
    assert [read(registry)[key] for key in keys] == [12000.0, 12000.0]
    engine.dispose()


def test_every_collector_degrades_instead_of_raising() -> None:
    """Each collector with sources that raise (the unflushed sums, the pool states, the live
    pools, the open sessions, the held connections) yields its families without the samples it
    could not read, never raises, and reports each exception to ``failed``."""
    from prometheus_client import Counter

    from observer.metrics._collectors import BatchedCollector, RouteHeldCollector, StateCollector

    def broken(*args: Any) -> Any:
        raise RuntimeError("source failed")

    failures: list[Exception] = []
    counter = Counter("c_total", "a counter", registry=None)
    counter.inc(2)
    collectors = [
        BatchedCollector([counter], broken, failures.append),
        StateCollector(broken, broken, broken, failures.append),
        RouteHeldCollector(broken, failures.append),
    ]
    samples = {
        metric.name: [(s.name, s.value) for s in metric.samples]
        for collector in collectors
        for metric in collector.collect()
    }
    assert samples == {
        "c": [("c_total", 2.0), ("c_created", samples["c"][1][1])],
        "sqlalchemy_pool_size": [],
        "sqlalchemy_pool_max_connections": [],
        "sqlalchemy_pool_checked_out_connections": [],
        "sqlalchemy_pool_checked_in_connections": [],
        "sqlalchemy_pool_overflow_connections": [],
        "sqlalchemy_pool_waiting_requests": [],
        "sqlalchemy_pools": [],
        "sqlalchemy_orm_sessions_open": [],
        "sqlalchemy_route_connections_held": [],
    }
    assert [str(exc) for exc in failures] == ["source failed"] * 5


def test_a_scrape_counts_a_failed_source_as_a_collect_hook_error() -> None:
    """Through an Observer: the sources of its collectors raising (its routes' unflushed sums,
    held connections and oldest checkouts, its sessions), a full scrape renders and the next
    flush counts each failure in ``observer_hook_errors_total{hook="collect"}``."""
    from observer import Observer

    registry = CollectorRegistry()
    obs = Observer(registry=registry, metrics_path=None, sweep_interval_seconds=SLOW)
    try:
        obs.routes._children = None  # type: ignore[assignment]  # unflushed and held fail
        obs.sessions.open = None  # type: ignore[assignment]
        body = generate_latest(registry).decode()
        obs.routes._children = {}
        obs.sessions.open = {}
        obs.flush()
        errors = registry.get_sample_value("observer_hook_errors_total", {"hook": "collect"})
    finally:
        obs.close()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert families["sqlalchemy_orm_sessions_open"].samples == []
    assert families["sqlalchemy_route_connections_held"].samples == []
    assert [s.value for s in families["sqlalchemy_pools"].samples] == [0.0]
    assert families["sqlalchemy_route_oldest_checkout_seconds"].samples == []
    assert errors == 4.0
