"""The metric names that dashboards and rules may use: what the library and the sidecar export."""

from __future__ import annotations

from typing import Final, Literal

MetricType = Literal["counter", "gauge", "histogram"]

# The metric names are a contract with dashboards, alerts and users; name -> type.
# Dashboards and rules may only use these; the core checks that it exports exactly these.
EXPORTED_METRICS: Final[dict[str, MetricType]] = {
    "sqlalchemy_pool_size": "gauge",
    "sqlalchemy_pool_max_connections": "gauge",
    "sqlalchemy_pool_checked_out_connections": "gauge",
    "sqlalchemy_pool_checked_in_connections": "gauge",
    "sqlalchemy_pool_overflow_connections": "gauge",
    "sqlalchemy_pool_waiting_requests": "gauge",
    "sqlalchemy_pools": "gauge",
    "sqlalchemy_orm_sessions_open": "gauge",
    "sqlalchemy_pool_checkout_duration_seconds": "histogram",
    "sqlalchemy_pool_connection_hold_seconds": "histogram",
    "sqlalchemy_pool_connect_duration_seconds": "histogram",
    "sqlalchemy_orm_session_duration_seconds": "histogram",
    "sqlalchemy_pool_checkouts_total": "counter",
    "sqlalchemy_pool_checkout_timeouts_total": "counter",
    "sqlalchemy_pool_connections_opened_total": "counter",
    "sqlalchemy_pool_connections_closed_total": "counter",
    "sqlalchemy_pool_connections_reclaimed_total": "counter",
    "sqlalchemy_pools_created_total": "counter",
    "sqlalchemy_orm_sessions_opened_total": "counter",
    "sqlalchemy_orm_sessions_closed_total": "counter",
    "sqlalchemy_orm_session_leaks_total": "counter",
    "sqlalchemy_route_connection_hold_seconds_total": "counter",
    "sqlalchemy_route_checkout_wait_seconds_total": "counter",
    "sqlalchemy_route_checkouts_total": "counter",
    "sqlalchemy_route_requests_total": "counter",
    "sqlalchemy_route_connections_held": "gauge",
    "observer_hook_errors_total": "counter",
}

# The server's view, exported by ``observer sidecar`` from pg_stat_activity and pg_locks.
SIDECAR_METRICS: Final[dict[str, MetricType]] = {
    "pg_up": "gauge",
    "pg_stat_activity_count": "gauge",
    "pg_stat_activity_max_tx_duration": "gauge",
    "pg_observer_idle_in_transaction_max_seconds": "gauge",
    "pg_observer_lock_waiting_backends": "gauge",
    "pg_observer_lock_wait_max_seconds": "gauge",
}


# Alembic: migrations (exported by `alembic upgrade` through a textfile or a Pushgateway, see
# docs/alembic.md) and schema drift (exported by the app: observer.alembic.watch_schema).
ALEMBIC_METRICS: Final[dict[str, MetricType]] = {
    "alembic_migration_running": "gauge",
    "alembic_migrations_total": "counter",
    "alembic_migration_duration_seconds": "histogram",
    "alembic_migration_last_timestamp_seconds": "gauge",
    "alembic_migration_last_duration_seconds": "gauge",
    "alembic_schema_revision_info": "gauge",
    "alembic_schema_drift": "gauge",
}


def series_names(metrics: dict[str, MetricType]) -> frozenset[str]:
    """Every series name a scrape shows for ``metrics`` (histograms as _bucket, _sum, _count)."""
    names: set[str] = set()
    for name, kind in metrics.items():
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return frozenset(names)
