"""The Prometheus metric families of an Observer, each built from its spec in the contract."""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from observer.metrics._contract import (
    BY_NAME,
    CLOSE_REASONS,
    CONNECT_BUCKETS,
    HOLD_BUCKETS,
    LEAK_REASONS,
    LEAK_RESOLUTIONS,
    WAIT_BUCKETS,
    MetricSpec,
    MetricType,
    exported,
)

__all__ = [
    "CLOSE_REASONS",
    "CONNECT_BUCKETS",
    "HOLD_BUCKETS",
    "LEAK_REASONS",
    "LIVE_POOLS",
    "LIVE_POOLS_HELP",
    "OTHER_ORIGIN",
    "POOL_GAUGES",
    "POOL_OLDEST",
    "POOL_OLDEST_HELP",
    "ROUTE_HELD",
    "ROUTE_HELD_HELP",
    "ROUTE_OLDEST",
    "ROUTE_OLDEST_HELP",
    "SESSIONS_OPEN",
    "SESSIONS_OPEN_HELP",
    "UNKNOWN_ORIGIN",
    "WAIT_BUCKETS",
    "Metrics",
    "PoolMetrics",
    "multiprocess_mode",
]

POOL_OLDEST = "sqlalchemy_pool_oldest_checkout_seconds"
POOL_OLDEST_HELP = BY_NAME[POOL_OLDEST].help
ROUTE_OLDEST = "sqlalchemy_route_oldest_checkout_seconds"
ROUTE_OLDEST_HELP = BY_NAME[ROUTE_OLDEST].help
# The gauges of a pool's state read at scrape time (observer.metrics._collectors), as name ->
# help; the oldest checkout is read from the checkout stamps instead (HeldNowCollector).
POOL_GAUGES: dict[str, str] = {
    s.name: s.help
    for s in exported("library")
    if s.type == "gauge" and s.labels == ("pool",) and s.name != POOL_OLDEST
}
LIVE_POOLS = "sqlalchemy_pools"
LIVE_POOLS_HELP = BY_NAME[LIVE_POOLS].help
SESSIONS_OPEN = "sqlalchemy_orm_sessions_open"
SESSIONS_OPEN_HELP = BY_NAME[SESSIONS_OPEN].help
ROUTE_HELD = "sqlalchemy_route_connections_held"
ROUTE_HELD_HELP = BY_NAME[ROUTE_HELD].help
OTHER_ORIGIN = "other"
"""Origin label of the leaks from lines beyond ``max_origins``."""
UNKNOWN_ORIGIN = "unknown"
"""Origin label of the leaks whose line is unknown (``capture_origin`` off, no app frame)."""


def _spec(name: str, kind: MetricType) -> MetricSpec:
    spec = BY_NAME[name]
    if spec.type != kind or spec.exporter != "library" or spec.planned:
        raise LookupError(f"{name} is not an exported library {kind} in the contract")
    return spec


def _counter(registry: CollectorRegistry, name: str) -> Counter:
    # prometheus-client adds the _total suffix the contract's name already carries.
    spec = _spec(name, "counter")
    return Counter(spec.name.removesuffix("_total"), spec.help, spec.labels, registry=registry)


def _histogram(registry: CollectorRegistry, name: str) -> Histogram:
    spec = _spec(name, "histogram")
    assert spec.buckets is not None  # every exported histogram has its buckets in the contract
    return Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=registry)


def _gauge(registry: CollectorRegistry, name: str) -> Gauge:
    spec = _spec(name, "gauge")
    assert spec.multiprocess_mode is not None  # every library gauge says how workers combine
    return Gauge(
        spec.name,
        spec.help,
        spec.labels,
        registry=registry,
        multiprocess_mode=spec.multiprocess_mode,
    )


def multiprocess_mode() -> bool:
    """Whether prometheus-client writes to ``PROMETHEUS_MULTIPROC_DIR`` in this process."""
    return bool(
        os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112 (the legacy name)
    )


@dataclass(slots=True)
class PoolMetrics:
    """The per-pool children, bound once at watch time (a ``.labels()`` per event doubles the
    cost, and creating a child inside a garbage-collection finalizer can deadlock)."""

    checkouts: Counter
    timeouts: Counter
    opened: Counter
    closed: dict[str, Counter]
    reclaimed: Counter
    double_handouts: Counter
    finalizers_off_loop: Counter
    checkout_duration: Histogram
    hold: Histogram
    connect_duration: Histogram
    gauges: dict[str, Gauge]


class Metrics:
    """Every metric family of one :class:`~observer.Observer`, registered on its registry."""

    def __init__(self, registry: CollectorRegistry, *, multiprocess: bool) -> None:
        self.registry = registry
        self.multiprocess = multiprocess
        r = registry
        self.checkouts = _counter(r, "sqlalchemy_pool_checkouts_total")
        self.timeouts = _counter(r, "sqlalchemy_pool_checkout_timeouts_total")
        self.opened = _counter(r, "sqlalchemy_pool_connections_opened_total")
        self.closed = _counter(r, "sqlalchemy_pool_connections_closed_total")
        self.reclaimed = _counter(r, "sqlalchemy_pool_connections_reclaimed_total")
        self.double_handouts = _counter(r, "sqlalchemy_pool_double_handouts_total")
        self.finalizers_off_loop = _counter(r, "observer_finalizers_off_loop_total")
        self.checkout_duration = _histogram(r, "sqlalchemy_pool_checkout_duration_seconds")
        self.hold = _histogram(r, "sqlalchemy_pool_connection_hold_seconds")
        self.connect_duration = _histogram(r, "sqlalchemy_pool_connect_duration_seconds")
        self.pools_created = _counter(r, "sqlalchemy_pools_created_total")
        self.sessions_opened = _counter(r, "sqlalchemy_orm_sessions_opened_total")
        self.sessions_closed = _counter(r, "sqlalchemy_orm_sessions_closed_total")
        self.session_duration = _histogram(r, "sqlalchemy_orm_session_duration_seconds")
        self.session_leaks = _counter(r, "sqlalchemy_orm_session_leaks_total")
        for reason in LEAK_REASONS:  # a 0 series from the start, so rate() and panels work
            self.session_leaks.labels(reason, "none")
        self.session_leak_origins = _counter(r, "sqlalchemy_orm_session_leak_origins_total")
        for reason in LEAK_REASONS:  # the app's lines are known at their first leak only
            self.session_leak_origins.labels(UNKNOWN_ORIGIN, reason)
        self.session_leaks_resolved = _counter(r, "sqlalchemy_orm_session_leaks_resolved_total")
        for reason in ("request_end", "too_old"):  # the reasons a session can outlive
            for how in LEAK_RESOLUTIONS:
                self.session_leaks_resolved.labels(reason, "none", how)
        self.route_hold = _counter(r, "sqlalchemy_route_connection_hold_seconds_total")
        self.route_wait = _counter(r, "sqlalchemy_route_checkout_wait_seconds_total")
        self.route_checkouts = _counter(r, "sqlalchemy_route_checkouts_total")
        self.route_requests = _counter(r, "sqlalchemy_route_requests_total")
        self.route_idle = _counter(r, "sqlalchemy_route_connection_idle_seconds_total")
        self.idle_gap = _histogram(r, "sqlalchemy_pool_connection_idle_gap_seconds")
        self.hook_errors = _counter(r, "observer_hook_errors_total")
        # Gauges: in one process a collector reads them from the pools at scrape time (exact,
        # free on the hot path). Under PROMETHEUS_MULTIPROC_DIR collectors are not aggregated,
        # so they are real gauges set from pool state by the sweeper: one series per worker for
        # pool state (a worker's own pool saturates, not the sum), summed for the totals (the
        # contract's multiprocess_mode of each gauge).
        self.pool_gauges: dict[str, Gauge] = {}
        self.live_pools: Gauge | None = None
        self.sessions_open: Gauge | None = None
        self.route_held: Gauge | None = None
        self.pool_oldest: Gauge | None = None
        self.route_oldest: Gauge | None = None
        if multiprocess:
            self.route_held = _gauge(r, ROUTE_HELD)
            self.pool_oldest = _gauge(r, POOL_OLDEST)
            self.route_oldest = _gauge(r, ROUTE_OLDEST)
            self.pool_gauges = {name: _gauge(r, name) for name in POOL_GAUGES}
            self.live_pools = _gauge(r, LIVE_POOLS)
            self.sessions_open = _gauge(r, SESSIONS_OPEN)

    def bind_pool(self, pool: str) -> PoolMetrics:
        """Create (once) and return the children of one pool."""
        return PoolMetrics(
            checkouts=self.checkouts.labels(pool),
            timeouts=self.timeouts.labels(pool),
            opened=self.opened.labels(pool),
            closed={reason: self.closed.labels(pool, reason) for reason in CLOSE_REASONS},
            reclaimed=self.reclaimed.labels(pool),
            double_handouts=self.double_handouts.labels(pool),
            finalizers_off_loop=self.finalizers_off_loop.labels(pool),
            checkout_duration=self.checkout_duration.labels(pool),
            hold=self.hold.labels(pool),
            connect_duration=self.connect_duration.labels(pool),
            gauges={name: gauge.labels(pool) for name, gauge in self.pool_gauges.items()},
        )

    def unbind_pool(self, pool: str) -> None:
        """Drop a pool's series (single-process only: multiprocess files cannot forget)."""
        if self.multiprocess:
            return
        for metric in (
            self.checkouts,
            self.timeouts,
            self.opened,
            self.reclaimed,
            self.double_handouts,
            self.finalizers_off_loop,
            self.checkout_duration,
            self.hold,
            self.connect_duration,
            self.idle_gap,
        ):
            metric.remove(pool)
        for reason in CLOSE_REASONS:
            self.closed.remove(pool, reason)
