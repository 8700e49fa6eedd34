"""The contract's tables for the products: ``observer sidecar`` and ``observer.alembic``."""

from __future__ import annotations

from typing import Final

from observer.metrics._spec import MIGRATION_BUCKETS, MetricSpec

_BY_STATE: Final = ("datname", "state", "application_name")
_SERVER: Final = ("server",)
_SETTING_DOC: Final = (
    "postgres_exporter's name. `server` is the `host:port` of the sidecar's database URL "
    "(port 5432 when it has none), the label the fleet's budget rules join on "
    "(docs/production.md)."
)

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
        doc="Every state of every database of the sidecar's view (`--databases`: by default "
        "its URL's) is present, 0 when empty; limited to the app's `application_name`.",
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
    MetricSpec(
        "pg_settings_max_connections",
        "gauge",
        _SERVER,
        "The server's max_connections setting.",
        exporter="sidecar",
        doc=_SETTING_DOC,
    ),
    MetricSpec(
        "pg_settings_superuser_reserved_connections",
        "gauge",
        _SERVER,
        "The server's superuser_reserved_connections setting.",
        exporter="sidecar",
        doc=_SETTING_DOC,
    ),
    MetricSpec(
        "pg_settings_reserved_connections",
        "gauge",
        _SERVER,
        "The server's reserved_connections setting (PostgreSQL 16+; 0 before).",
        exporter="sidecar",
        doc=_SETTING_DOC,
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
        "Alembic revisions run to their last attempt, by direction and final outcome "
        "(success, failed, lock_timeout, statement_timeout).",
        exporter="alembic",
    ),
    MetricSpec(
        "alembic_migration_retries_total",
        "counter",
        _RUN,
        "Attempts at an Alembic revision that gave up on a lock (lock_timeout) and were "
        "tried again, by direction and the attempt's outcome.",
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
