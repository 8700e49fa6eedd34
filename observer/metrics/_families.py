"""The Prometheus metrics (names are a contract: DESIGN.md section 3), built on a given registry."""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CLOSE_REASONS = ("closed", "invalidated", "soft_invalidated", "detached", "garbage_collected")
LEAK_REASONS = ("request_end", "garbage_collected", "too_old")

# Waits: sub-millisecond when a connection is idle, up to pool_timeout (30 s by default).
WAIT_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Holds and session lifetimes: a fast query to a transaction left open for minutes.
HOLD_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# name -> (type, labels, help); the single list every consumer (docs, dashboards, tests) reads.
POOL_GAUGES: dict[str, str] = {
    "sqlalchemy_pool_size": "Configured pool_size of the pool.",
    "sqlalchemy_pool_max_connections": "pool_size + max_overflow; -1 when the pool is unbounded.",
    "sqlalchemy_pool_checked_out_connections": "Connections in use now.",
    "sqlalchemy_pool_checked_in_connections": "Idle connections in the pool now.",
    "sqlalchemy_pool_overflow_connections": "Connections open beyond pool_size now.",
    "sqlalchemy_pool_waiting_requests": "Callers waiting for a connection now.",
}
LIVE_POOLS = "sqlalchemy_pools"
LIVE_POOLS_HELP = "Connection pools alive in this process (an engine created per request climbs)."
SESSIONS_OPEN = "sqlalchemy_orm_sessions_open"
SESSIONS_OPEN_HELP = "ORM sessions holding a transaction now."
ROUTE_HELD = "sqlalchemy_route_connections_held"
ROUTE_HELD_HELP = "Connections held now, by the route of the request that checked them out."


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
        self.checkouts = Counter(
            "sqlalchemy_pool_checkouts",
            "Connections checked out of the pool.",
            ["pool"],
            registry=r,
        )
        self.timeouts = Counter(
            "sqlalchemy_pool_checkout_timeouts",
            "Checkouts that gave up after pool_timeout (QueuePool limit ... reached).",
            ["pool"],
            registry=r,
        )
        self.opened = Counter(
            "sqlalchemy_pool_connections_opened",
            "New DBAPI connections opened by the pool.",
            ["pool"],
            registry=r,
        )
        self.closed = Counter(
            "sqlalchemy_pool_connections_closed",
            "Connections that left the pool, by reason: " + ", ".join(CLOSE_REASONS) + ".",
            ["pool", "reason"],
            registry=r,
        )
        self.reclaimed = Counter(
            "sqlalchemy_pool_connections_reclaimed",
            "Checked-out connections the garbage collector reclaimed: the app never returned them.",
            ["pool"],
            registry=r,
        )
        self.checkout_duration = Histogram(
            "sqlalchemy_pool_checkout_duration_seconds",
            "Time to get a connection from the pool, waiting included (timeouts too).",
            ["pool"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.hold = Histogram(
            "sqlalchemy_pool_connection_hold_seconds",
            "Time a connection stayed checked out (checkout to checkin).",
            ["pool"],
            buckets=HOLD_BUCKETS,
            registry=r,
        )
        self.connect_duration = Histogram(
            "sqlalchemy_pool_connect_duration_seconds",
            "Time to open a new DBAPI connection.",
            ["pool"],
            buckets=CONNECT_BUCKETS,
            registry=r,
        )
        self.pools_created = Counter(
            "sqlalchemy_pools_created",
            "Connection pools seen for the first time (an engine created per request climbs).",
            registry=r,
        )
        self.sessions_opened = Counter(
            "sqlalchemy_orm_sessions_opened",
            "ORM sessions that began a transaction (could hold a connection).",
            registry=r,
        )
        self.sessions_closed = Counter(
            "sqlalchemy_orm_sessions_closed",
            "ORM sessions whose transaction ended (commit, rollback, close or garbage collection).",
            registry=r,
        )
        self.session_duration = Histogram(
            "sqlalchemy_orm_session_duration_seconds",
            "Time an ORM session held its transaction.",
            buckets=HOLD_BUCKETS,
            registry=r,
        )
        self.session_leaks = Counter(
            "sqlalchemy_orm_session_leaks",
            "Sessions reported as leaked, by reason ("
            + ", ".join(LEAK_REASONS)
            + ") and by the route that opened them.",
            ["reason", "route"],
            registry=r,
        )
        for reason in LEAK_REASONS:  # a 0 series from the start, so rate() and panels work
            self.session_leaks.labels(reason, "none")
        self.route_hold = Counter(
            "sqlalchemy_route_connection_hold_seconds",
            "Connection time used by each route (who hogs the pool).",
            ["route"],
            registry=r,
        )
        self.route_wait = Counter(
            "sqlalchemy_route_checkout_wait_seconds",
            "Time each route waited for connections (who suffers).",
            ["route"],
            registry=r,
        )
        self.route_checkouts = Counter(
            "sqlalchemy_route_checkouts",
            "Connections checked out by each route.",
            ["route"],
            registry=r,
        )
        self.route_requests = Counter(
            "sqlalchemy_route_requests",
            "HTTP requests finished, by route (divide the route's wait and hold by it).",
            ["route"],
            registry=r,
        )
        self.hook_errors = Counter(
            "observer_hook_errors",
            "Exceptions swallowed inside observer hooks (the app went on).",
            ["hook"],
            registry=r,
        )
        # Gauges: in one process a collector reads them from the pools at scrape time (exact,
        # free on the hot path). Under PROMETHEUS_MULTIPROC_DIR collectors are not aggregated,
        # so they are real gauges set from pool state by the sweeper: one series per worker for
        # pool state (a worker's own pool saturates, not the sum), summed for the totals.
        self.pool_gauges: dict[str, Gauge] = {}
        self.live_pools: Gauge | None = None
        self.sessions_open: Gauge | None = None
        self.route_held: Gauge | None = None
        if multiprocess:
            self.route_held = Gauge(
                ROUTE_HELD, ROUTE_HELD_HELP, ["route"], registry=r, multiprocess_mode="livesum"
            )
            for name, help_text in POOL_GAUGES.items():
                self.pool_gauges[name] = Gauge(
                    name, help_text, ["pool"], registry=r, multiprocess_mode="liveall"
                )
            self.live_pools = Gauge(
                LIVE_POOLS, LIVE_POOLS_HELP, registry=r, multiprocess_mode="livesum"
            )
            self.sessions_open = Gauge(
                SESSIONS_OPEN, SESSIONS_OPEN_HELP, registry=r, multiprocess_mode="livesum"
            )

    def bind_pool(self, pool: str) -> PoolMetrics:
        """Create (once) and return the children of one pool."""
        return PoolMetrics(
            checkouts=self.checkouts.labels(pool),
            timeouts=self.timeouts.labels(pool),
            opened=self.opened.labels(pool),
            closed={reason: self.closed.labels(pool, reason) for reason in CLOSE_REASONS},
            reclaimed=self.reclaimed.labels(pool),
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
            self.checkout_duration,
            self.hold,
            self.connect_duration,
        ):
            metric.remove(pool)
        for reason in CLOSE_REASONS:
            self.closed.remove(pool, reason)
