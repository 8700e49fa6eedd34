"""The metric contract: every exported (or promised) metric's name, type, labels and help, once."""

from __future__ import annotations

from typing import Final

from observer.metrics._contract_products import ALEMBIC, SIDECAR
from observer.metrics._spec import (
    CLOSE_REASONS,
    CONNECT_BUCKETS,
    HOLD_BUCKETS,
    LEAK_REASONS,
    LEAK_RESOLUTIONS,
    MIGRATION_BUCKETS,
    WAIT_BUCKETS,
    Exporter,
    MetricSpec,
    MetricType,
    MultiprocessMode,
)

__all__ = [
    "ALEMBIC",
    "BY_NAME",
    "CLOSE_REASONS",
    "CONNECT_BUCKETS",
    "HOLD_BUCKETS",
    "LEAK_REASONS",
    "LEAK_RESOLUTIONS",
    "LIBRARY",
    "METRICS",
    "MIGRATION_BUCKETS",
    "SIDECAR",
    "WAIT_BUCKETS",
    "Exporter",
    "MetricSpec",
    "MetricType",
    "MultiprocessMode",
    "exported",
]


def _pool(name: str, help_text: str, doc: str = "") -> MetricSpec:
    return MetricSpec(name, "gauge", ("pool",), help_text, multiprocess_mode="liveall", doc=doc)


_POOL: Final = ("pool",)
_ROUTE: Final = ("route",)

LIBRARY: Final[tuple[MetricSpec, ...]] = (
    _pool(
        "sqlalchemy_pool_size",
        "Configured pool_size of the pool.",
        "0 for `NullPool`, 1 for `StaticPool`.",
    ),
    _pool(
        "sqlalchemy_pool_max_connections",
        "pool_size + max_overflow; -1 when the pool is unbounded.",
        "Unbounded: `max_overflow=-1`, `NullPool`, `StaticPool`.",
    ),
    _pool(
        "sqlalchemy_pool_checked_out_connections",
        "Connections in use now.",
        "Also those still out of a pool that `dispose()` replaced.",
    ),
    _pool(
        "sqlalchemy_pool_checked_in_connections",
        "Idle connections in the pool now.",
        "Also those left open in a pool that `dispose()` replaced.",
    ),
    _pool(
        "sqlalchemy_pool_overflow_connections",
        "Connections open beyond pool_size now.",
        "Never below 0.",
    ),
    _pool("sqlalchemy_pool_waiting_requests", "Callers waiting for a connection now."),
    MetricSpec(
        "sqlalchemy_pool_checkout_duration_seconds",
        "histogram",
        _POOL,
        "Time to get a connection from the pool, waiting included (timeouts too).",
        WAIT_BUCKETS,
    ),
    MetricSpec(
        "sqlalchemy_pool_connection_hold_seconds",
        "histogram",
        _POOL,
        "Time a connection stayed checked out (checkout to checkin).",
        HOLD_BUCKETS,
        doc="A connection the garbage collector reclaims ends its hold there.",
    ),
    MetricSpec(
        "sqlalchemy_pool_connect_duration_seconds",
        "histogram",
        _POOL,
        "Time to open a new DBAPI connection.",
        CONNECT_BUCKETS,
    ),
    MetricSpec(
        "sqlalchemy_pool_checkouts_total", "counter", _POOL, "Connections checked out of the pool."
    ),
    MetricSpec(
        "sqlalchemy_pool_checkout_timeouts_total",
        "counter",
        _POOL,
        "Checkouts that gave up after pool_timeout (QueuePool limit ... reached).",
    ),
    MetricSpec(
        "sqlalchemy_pool_connections_opened_total",
        "counter",
        _POOL,
        "New DBAPI connections opened by the pool.",
    ),
    MetricSpec(
        "sqlalchemy_pool_connections_closed_total",
        "counter",
        ("pool", "reason"),
        "Connections that left the pool, by reason: " + ", ".join(CLOSE_REASONS) + ".",
        doc="`closed` covers recycled, overflow and `dispose()`.",
    ),
    MetricSpec(
        "sqlalchemy_pool_connections_reclaimed_total",
        "counter",
        _POOL,
        "Checked-out connections the garbage collector reclaimed: the app never returned them.",
    ),
    MetricSpec(
        "sqlalchemy_pools",
        "gauge",
        (),
        "Connection pools alive in this process (an engine created per request climbs).",
        multiprocess_mode="livesum",
        doc="Also pools of engines nobody passed to the observer.",
    ),
    MetricSpec(
        "sqlalchemy_pools_created_total",
        "counter",
        (),
        "Connection pools seen for the first time (an engine created per request climbs).",
        doc="`dispose()` per request climbs too.",
    ),
    MetricSpec(
        "sqlalchemy_orm_sessions_open",
        "gauge",
        (),
        "ORM sessions holding a transaction now.",
        multiprocess_mode="livesum",
    ),
    MetricSpec(
        "sqlalchemy_orm_sessions_opened_total",
        "counter",
        (),
        "ORM sessions that began a transaction (could hold a connection).",
    ),
    MetricSpec(
        "sqlalchemy_orm_sessions_closed_total",
        "counter",
        (),
        "ORM sessions whose transaction ended (commit, rollback, close or garbage collection).",
    ),
    MetricSpec(
        "sqlalchemy_orm_session_duration_seconds",
        "histogram",
        (),
        "Time an ORM session held its transaction.",
        HOLD_BUCKETS,
    ),
    MetricSpec(
        "sqlalchemy_orm_session_leaks_total",
        "counter",
        ("reason", "route"),
        "Sessions reported as leaked, by reason ("
        + ", ".join(LEAK_REASONS)
        + ") and by the route that opened them.",
        doc="`garbage_collected`: dropped while open; `too_old`: open past "
        "`leak_threshold_seconds`; `request_end`: still open "
        "`request_end_grace_seconds` after the response finished. A session counts once, under "
        "the reason it was first found with. Every reason has a "
        '`route="none"` series from the start.',
    ),
    MetricSpec(
        "sqlalchemy_orm_session_leaks_resolved_total",
        "counter",
        ("reason", "route", "how"),
        "Leaked sessions that ended later, by the reason they were counted under, their route "
        "and how: " + ", ".join(LEAK_RESOLUTIONS) + ".",
        doc="A leak counts once in `sqlalchemy_orm_session_leaks_total`, under the reason it was "
        "first found with; what happened to it afterwards counts here: `closed` (its transaction "
        "ended late), `garbage_collected` (dropped without close). Leaked sessions still open "
        "now: leaks with reason `request_end` or `too_old` minus these.",
    ),
    MetricSpec(
        "sqlalchemy_route_connection_hold_seconds_total",
        "counter",
        _ROUTE,
        "Connection time used by each route (who hogs the pool).",
    ),
    MetricSpec(
        "sqlalchemy_route_checkout_wait_seconds_total",
        "counter",
        _ROUTE,
        "Time each route waited for connections (who suffers).",
    ),
    MetricSpec(
        "sqlalchemy_route_checkouts_total",
        "counter",
        _ROUTE,
        "Connections checked out by each route.",
    ),
    MetricSpec(
        "sqlalchemy_route_requests_total",
        "counter",
        _ROUTE,
        "HTTP requests finished, by route (divide the route's wait and hold by it).",
    ),
    MetricSpec(
        "sqlalchemy_route_connections_held",
        "gauge",
        _ROUTE,
        "Connections held now, by the route of the request that checked them out.",
        multiprocess_mode="livesum",
    ),
    _pool(
        "sqlalchemy_pool_oldest_checkout_seconds",
        "Age of the oldest connection checked out of the pool now (0 when none).",
        "Held now, read at scrape time: a connection never returned keeps growing it (the hold "
        "histogram only counts connections that came back).",
    ),
    MetricSpec(
        "sqlalchemy_route_oldest_checkout_seconds",
        "gauge",
        _ROUTE,
        "Age of the oldest connection held now, by the route of the request that checked it out.",
        multiprocess_mode="livemax",
        doc='`route="none"` for work outside requests; 0 for a route that holds none now.',
    ),
    MetricSpec(
        "sqlalchemy_pool_double_handouts_total",
        "counter",
        _POOL,
        "Connections handed out while already checked out by someone else.",
        doc="Counted when the pool takes back a connection another checkout still holds "
        "(SQLAlchemy's garbage-collection finalizer of a leaked async connection, "
        "docs/reliability.md), or when a checkout gets a connection the observer has as "
        "checked out by another owner; the `pool.double_handout` log names both.",
    ),
    MetricSpec(
        "observer_finalizers_off_loop_total",
        "counter",
        _POOL,
        "Leaked async connections the garbage collector reclaimed on a pool-observer thread.",
        doc="SQLAlchemy's finalizer then terminated the connection off the event loop; the "
        "observer's threads allocate nothing when idle, so this stays 0 unless they are busy.",
    ),
    MetricSpec(
        "observer_hook_errors_total",
        "counter",
        ("hook",),
        "Exceptions swallowed inside observer hooks (the app went on).",
    ),
    MetricSpec(
        "sqlalchemy_orm_session_leak_origins_total",
        "counter",
        ("origin", "reason"),
        "Leaked sessions by the app line that began their transaction and the leak reason.",
        doc="`origin` is `path/to/module.py:LINE in function`, relative to the app's working "
        "directory, as the `origin` field of the `session.leak` log; at most `max_origins` "
        "lines, then `other`; `unknown` when `capture_origin` is off or no app frame was found "
        '(every reason has an `origin="unknown"` series from the start). Each leak counts '
        "once here and once in `sqlalchemy_orm_session_leaks_total`, under the "
        "same reason. No route label (lines times routes would multiply the series): "
        "docs/dashboards.md says how the dashboard and alerts pair lines with routes.",
    ),
    # Promised for upcoming work.
    MetricSpec(
        "sqlalchemy_route_connection_idle_seconds_total",
        "counter",
        _ROUTE,
        "Time connections held by each route sat idle between queries.",
        doc="Checked out with no statement running: from the checkout (or the end of a "
        "statement, COMMIT or ROLLBACK) to the next one, and from the last one to the checkin. "
        "Its share of `sqlalchemy_route_connection_hold_seconds_total` is the time the route "
        "held connections across non-database awaits (alert "
        "`SQLAlchemyRouteHoldsConnectionsIdle`, docs/runbooks.md).",
    ),
    MetricSpec(
        "sqlalchemy_pool_connection_idle_gap_seconds",
        "histogram",
        _POOL,
        "Longest time a checked-out connection went with no statement running, per checkout.",
        WAIT_BUCKETS,
        doc="One observation per checkout: its longest gap with no statement running (the "
        "whole hold when none ran). A gap over `idle_gap_log_seconds` logs `pool.held_idle`.",
    ),
)


METRICS: Final[tuple[MetricSpec, ...]] = LIBRARY + SIDECAR + ALEMBIC
"""The whole contract: docs/reference.md, the dashboards' allowed names and the tests read it."""

BY_NAME: Final[dict[str, MetricSpec]] = {spec.name: spec for spec in METRICS}


def exported(exporter: Exporter) -> tuple[MetricSpec, ...]:
    """The specs of ``exporter`` that are exported today (planned ones left out)."""
    return tuple(s for s in METRICS if s.exporter == exporter and not s.planned)
