"""The metric contract: every exported (or promised) metric's name, type, labels and help, once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

MetricType = Literal["counter", "gauge", "histogram"]
# Who exports a metric: the library in the app, ``observer sidecar``, or ``observer.alembic``.
Exporter = Literal["library", "sidecar", "alembic"]
# How prometheus-client aggregates a gauge over the workers of PROMETHEUS_MULTIPROC_DIR.
MultiprocessMode = Literal["liveall", "livesum"]

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
# A migration takes from a fraction of a second (ADD COLUMN) to an hour (a backfill).
MIGRATION_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric family as a scrape shows it (a counter's name ends in ``_total``)."""

    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] | None = None
    exporter: Exporter = "library"
    planned: bool = False
    """Promised for upcoming work: documented, but not exported yet (dashboards may not use it)."""
    multiprocess_mode: MultiprocessMode | None = None
    """For the library's gauges: how the workers' values combine under PROMETHEUS_MULTIPROC_DIR
    (``liveall``: a series per worker, since a worker's own pool saturates, not the sum)."""
    doc: str = ""
    """More than the help text, for docs/reference.md (Markdown)."""


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
        "`request_end_grace_seconds` after the response finished. Every reason has a "
        '`route="none"` series from the start.',
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
    MetricSpec(
        "observer_hook_errors_total",
        "counter",
        ("hook",),
        "Exceptions swallowed inside observer hooks (the app went on).",
    ),
    # Promised for upcoming work.
    MetricSpec(
        "sqlalchemy_pool_oldest_checkout_seconds",
        "gauge",
        _POOL,
        "Age of the oldest connection checked out of the pool now (0 when none).",
        planned=True,
    ),
    MetricSpec(
        "sqlalchemy_route_oldest_checkout_seconds",
        "gauge",
        _ROUTE,
        "Age of the oldest connection held now, by the route of the request that checked it out.",
        planned=True,
    ),
    MetricSpec(
        "sqlalchemy_orm_session_leak_origins_total",
        "counter",
        ("origin", "reason"),
        "Leaked sessions by the code location that opened them and the leak reason.",
        planned=True,
    ),
    MetricSpec(
        "sqlalchemy_route_connection_idle_seconds_total",
        "counter",
        _ROUTE,
        "Time connections held by each route sat idle between queries.",
        planned=True,
    ),
    MetricSpec(
        "sqlalchemy_pool_connection_idle_gap_seconds",
        "histogram",
        _POOL,
        "Idle gaps between queries on a checked-out connection.",
        planned=True,
    ),
    MetricSpec(
        "sqlalchemy_pool_double_handouts_total",
        "counter",
        _POOL,
        "Connections handed out while already checked out by someone else.",
        planned=True,
    ),
)

_BY_STATE: Final = ("datname", "state", "application_name")

SIDECAR: Final[tuple[MetricSpec, ...]] = (
    MetricSpec(
        "pg_up",
        "gauge",
        (),
        "Whether the last poll of the database succeeded (1) or not (0).",
        exporter="sidecar",
        doc="postgres_exporter's name.",
    ),
    MetricSpec(
        "pg_stat_activity_count",
        "gauge",
        _BY_STATE,
        "Backends of the application by database and state (as postgres_exporter).",
        exporter="sidecar",
        doc="Every state of every connectable database is present, 0 when empty; limited "
        "to the app's `application_name`.",
    ),
    MetricSpec(
        "pg_stat_activity_max_tx_duration",
        "gauge",
        _BY_STATE,
        "Age in seconds of the oldest transaction by database and state (as postgres_exporter).",
        exporter="sidecar",
        doc="Seconds since `xact_start`.",
    ),
    MetricSpec(
        "pg_observer_idle_in_transaction_max_seconds",
        "gauge",
        ("application_name",),
        "Seconds the application's oldest idle-in-transaction backend has been idle.",
        exporter="sidecar",
        doc="`now() - state_change`; 0 when none.",
    ),
    MetricSpec(
        "pg_observer_oldest_transaction_seconds",
        "gauge",
        ("application_name",),
        "Age in seconds of the application's oldest open transaction.",
        exporter="sidecar",
        doc="`now() - xact_start`; 0 when none.",
    ),
    MetricSpec(
        "pg_observer_lock_waiting_backends",
        "gauge",
        ("datname",),
        "Client backends waiting for a lock, by database.",
        exporter="sidecar",
        doc="Backends of any application (`wait_event_type = 'Lock'`).",
    ),
    MetricSpec(
        "pg_observer_lock_wait_max_seconds",
        "gauge",
        ("datname",),
        "Seconds the longest current lock wait has lasted, by database.",
        exporter="sidecar",
        doc="`now() - query_start`; 0 when none.",
    ),
    MetricSpec(
        "pg_observer_polls_total",
        "counter",
        (),
        "Polls of pg_stat_activity by the sidecar.",
        exporter="sidecar",
    ),
    MetricSpec(
        "pg_observer_poll_errors_total",
        "counter",
        (),
        "Polls of pg_stat_activity that failed (database down, timeout, ...).",
        exporter="sidecar",
    ),
    MetricSpec(
        "pg_observer_poll_duration_seconds",
        "gauge",
        (),
        "How long the latest poll of pg_stat_activity took.",
        exporter="sidecar",
    ),
    MetricSpec(
        "observer_sidecar_multiproc_files",
        "gauge",
        (),
        "Files in PROMETHEUS_MULTIPROC_DIR; many slow every scrape (wipe it at app start).",
        exporter="sidecar",
    ),
    MetricSpec(
        "observer_sidecar_dead_workers_pruned_total",
        "counter",
        (),
        "Dead worker pids whose live gauges the sidecar removed (mark_process_dead).",
        exporter="sidecar",
    ),
    # Promised for upcoming work.
    MetricSpec(
        "pg_settings_max_connections",
        "gauge",
        (),
        "The server's max_connections setting (postgres_exporter's name).",
        exporter="sidecar",
        planned=True,
    ),
    MetricSpec(
        "pg_settings_superuser_reserved_connections",
        "gauge",
        (),
        "The server's superuser_reserved_connections setting (postgres_exporter's name).",
        exporter="sidecar",
        planned=True,
    ),
)

_RUN: Final = ("direction", "outcome")
_REVISION_RUN: Final = ("revision", "direction", "outcome")

ALEMBIC: Final[tuple[MetricSpec, ...]] = (
    MetricSpec(
        "alembic_migration_running",
        "gauge",
        (),
        "1 while this process applies Alembic migrations, 0 once it is done.",
        exporter="alembic",
    ),
    MetricSpec(
        "alembic_migrations_total",
        "counter",
        _RUN,
        "Alembic revisions applied, by direction and outcome "
        "(success, failed, lock_timeout, statement_timeout).",
        exporter="alembic",
    ),
    MetricSpec(
        "alembic_migration_duration_seconds",
        "histogram",
        _RUN,
        "Time one Alembic revision took to apply (upgrade or downgrade).",
        MIGRATION_BUCKETS,
        exporter="alembic",
    ),
    MetricSpec(
        "alembic_migration_last_timestamp_seconds",
        "gauge",
        _REVISION_RUN,
        "Unix time at which a revision last finished, by revision, direction and outcome "
        "(changes() of it is a dashboard annotation).",
        exporter="alembic",
    ),
    MetricSpec(
        "alembic_migration_last_duration_seconds",
        "gauge",
        _REVISION_RUN,
        "How long a revision took the last time it was applied.",
        exporter="alembic",
    ),
    MetricSpec(
        "alembic_schema_revision_info",
        "gauge",
        ("database", "database_revision", "code_head", "state"),
        "1 for the database's current Alembic revision and the head the code expects, "
        "with the state: current, behind, ahead or uninitialized.",
        exporter="alembic",
        doc="Exported by the app (`observer.alembic.watch_schema`).",
    ),
    MetricSpec(
        "alembic_schema_drift",
        "gauge",
        ("database",),
        "1 when the database's Alembic revision is not the head the running code expects.",
        exporter="alembic",
        doc="Exported by the app (`observer.alembic.watch_schema`).",
    ),
)

METRICS: Final[tuple[MetricSpec, ...]] = LIBRARY + SIDECAR + ALEMBIC
"""The whole contract: docs/reference.md, the dashboards' allowed names and the tests read it."""

BY_NAME: Final[dict[str, MetricSpec]] = {spec.name: spec for spec in METRICS}


def exported(exporter: Exporter) -> tuple[MetricSpec, ...]:
    """The specs of ``exporter`` that are exported today (planned ones left out)."""
    return tuple(s for s in METRICS if s.exporter == exporter and not s.planned)
