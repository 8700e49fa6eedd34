"""Alert rules: pages that fire on real pool and session trouble, never on a healthy busy app."""

from __future__ import annotations

from typing import Any

from observer.monitoring import _rules
from observer.monitoring._alert_base import (
    COUNT,
    POOL_DASHBOARD,
    SESSIONS_DASHBOARD,
    Alert,
    Severity,
    top_origin,
    top_origin_of_route,
)
from observer.monitoring._alert_base import increase_over as _increase
from observer.monitoring._alert_base import where as _where
from observer.monitoring._fleet_alerts import fleet_alerts
from observer.monitoring._held_alerts import held_alerts
from observer.monitoring.config import MonitoringConfig

__all__ = ["POOL_DASHBOARD", "SESSIONS_DASHBOARD", "Alert", "Severity", "all_alerts"]


def pool_alerts(config: MonitoringConfig) -> list[Alert]:
    """Alerts on the connection pools, per (job, instance, pool)."""
    return [*_capacity_alerts(config), *_latency_alerts(config), *_churn_alerts(config)]


def _capacity_alerts(config: MonitoringConfig) -> list[Alert]:
    """The pool is (nearly) out of connections, or requests already fail for want of one."""
    c = config
    util = _rules.utilization(c)
    return [
        Alert(
            "SQLAlchemyPoolExhausted",
            f"{util} >= 1",
            c.exhausted_for,
            "critical",
            "Every connection of a SQLAlchemy pool is checked out.",
            f"{_where()} has had all its connections checked out for {c.exhausted_for}: "
            "new requests wait up to pool_timeout for a connection, then fail.",
            POOL_DASHBOARD,
        ),
        Alert(
            "SQLAlchemyPoolSaturationHigh",
            f"{util} > {c.saturation_ratio:g}",
            c.saturation_for,
            "warning",
            "A SQLAlchemy pool is running out of connections.",
            f"{_where()} has {{{{ $value | humanizePercentage }}}} of its connections checked "
            f"out (threshold {c.saturation_ratio:.0%}) for {c.saturation_for}.",
            POOL_DASHBOARD,
        ),
        Alert(
            "SQLAlchemyPoolCheckoutTimeouts",
            _increase(
                "sqlalchemy_pool_checkout_timeouts_total",
                c.selector(),
                c.timeouts_window,
                _rules.POOL,
                0,
            ),
            c.timeouts_for,
            "critical",
            "Requests fail because a SQLAlchemy pool has no free connection.",
            f"{_where()} timed out {COUNT} checkouts in the last {c.timeouts_window}: "
            "no connection became free within pool_timeout.",
            POOL_DASHBOARD,
        ),
    ]


def _latency_alerts(config: MonitoringConfig) -> list[Alert]:
    """Connections are slow to get or held long: the p99s of the recording rules."""
    c = config
    return [
        Alert(
            "SQLAlchemyPoolSlowCheckout",
            f"{_rules.p99('sqlalchemy_pool_checkout_duration_seconds', c)} "
            f"> {c.slow_checkout_seconds:g}",
            c.slow_checkout_for,
            "warning",
            "Getting a connection from a SQLAlchemy pool is slow.",
            f"{_where()}: 99% of checkouts took up to {{{{ $value | humanizeDuration }}}} "
            f"over {c.rate_window} (threshold {c.slow_checkout_seconds:g}s); "
            "requests queue for connections.",
            POOL_DASHBOARD,
        ),
        Alert(
            "SQLAlchemyPoolLongConnectionHold",
            f"{_rules.p99('sqlalchemy_pool_connection_hold_seconds', c)} > {c.long_hold_seconds:g}",
            c.long_hold_for,
            "warning",
            "Connections stay checked out of a SQLAlchemy pool for a long time.",
            f"{_where()}: 99% of connections were held up to {{{{ $value | humanizeDuration }}}} "
            f"over {c.rate_window} (threshold {c.long_hold_seconds:g}s); "
            "code holds connections across slow work.",
            POOL_DASHBOARD,
        ),
    ]


def _churn_alerts(config: MonitoringConfig) -> list[Alert]:
    """Connections lost to the garbage collector (or handed out twice after it), or invalidated
    by the server or network."""
    c = config
    return [
        Alert(
            "SQLAlchemyPoolConnectionsReclaimed",
            _increase(
                "sqlalchemy_pool_connections_reclaimed_total",
                c.selector(),
                c.reclaimed_window,
                _rules.POOL,
                0,
            ),
            c.reclaimed_for,
            "warning",
            "The garbage collector reclaimed connections the app never returned.",
            f"{_where()} lost {COUNT} checked-out connections to the garbage collector in the "
            f"last {c.reclaimed_window}: code checks out connections and never closes them.",
            SESSIONS_DASHBOARD,
        ),
        Alert(
            "SQLAlchemyPoolDoubleHandout",
            _increase(
                "sqlalchemy_pool_double_handouts_total",
                c.selector(),
                c.double_handouts_window,
                _rules.POOL,
                0,
            ),
            c.double_handouts_for,
            "critical",
            "A SQLAlchemy pool handed one connection to two requests.",
            f"{_where()} handed out {COUNT} connections that another request still held in the "
            f"last {c.double_handouts_window}: their statements share one database session. A "
            "leaked connection reclaimed by the garbage collector caused it.",
            POOL_DASHBOARD,
        ),
        Alert(
            "SQLAlchemyPoolInvalidationSpike",
            _increase(
                "sqlalchemy_pool_connections_closed_total",
                c.selector('reason="invalidated"'),
                c.invalidations_window,
                _rules.POOL,
                c.invalidations_threshold,
            ),
            c.invalidations_for,
            "warning",
            "Many SQLAlchemy pool connections are being invalidated.",
            f"{_where()} invalidated {COUNT} connections in the last "
            f"{c.invalidations_window} (threshold {c.invalidations_threshold:g}): the server or "
            "network is dropping connections.",
            POOL_DASHBOARD,
        ),
    ]


def session_alerts(config: MonitoringConfig) -> list[Alert]:
    """Alerts on ORM sessions and on engines, per (job, instance)."""
    c = config
    sel = c.selector()
    opened = f"sqlalchemy_orm_sessions_open{sel}"
    floor = f"min by (job, instance) (min_over_time({opened}[{c.leak_floor_window}]"
    return [
        Alert(
            "SQLAlchemySessionLeakSuspected",
            f"(\n  {floor}))\n  - {floor} offset {c.leak_floor_offset}))\n"
            f") > {c.leak_floor_increase:g}\n"
            f"and max by (job, instance) (deriv({opened}[{c.leak_floor_offset}])) > 0",
            c.leak_suspected_for,
            "warning",
            "The floor of open ORM sessions keeps rising.",
            f"{_where(pool=False)}: the fewest open sessions over {c.leak_floor_window} is "
            f"{COUNT} higher than {c.leak_floor_offset} before, and still rising: "
            "sessions are opened and never closed." + top_origin("too_old", c.leak_floor_offset),
            SESSIONS_DASHBOARD,
        ),
        Alert(
            "SQLAlchemySessionsLeaking",
            _increase(
                "sqlalchemy_orm_session_leaks_total",
                sel,
                c.leaks_window,
                "job, instance, route",
                0,
            ),
            c.leaks_for,
            "warning",
            "ORM sessions are leaking.",
            f"{COUNT} sessions opened by route {{{{ $labels.route }}}} of "
            f"{_where(pool=False)} leaked in the last {c.leaks_window}."
            + top_origin_of_route(None, c.leaks_window),
            SESSIONS_DASHBOARD,
        ),
        Alert(
            "SQLAlchemyEnginePerRequest",
            f"(\n  max by (job, instance) (sqlalchemy_pools{sel}) > {c.live_pools_threshold:g}\n"
            f"  and max by (job, instance) (deriv(sqlalchemy_pools{sel}"
            f"[{c.engine_per_request_window}])) > 0\n)\n"
            f"or sum by (job, instance) (increase(sqlalchemy_pools_created_total{sel}"
            f"[{c.engine_per_request_window}])) > {c.pools_created_threshold:g}",
            c.engine_per_request_for,
            "warning",
            "The app keeps creating SQLAlchemy engines.",
            f"{_where(pool=False)} keeps creating connection pools (more than "
            f"{c.live_pools_threshold:g} live and rising, or more than "
            f"{c.pools_created_threshold:g} created in {c.engine_per_request_window}): "
            "an engine is created per request instead of once at startup.",
            POOL_DASHBOARD,
        ),
    ]


def observer_alerts(config: MonitoringConfig) -> list[Alert]:
    """Alerts on pool-observer itself and on the PostgreSQL server's view (sidecar)."""
    c = config
    return [
        Alert(
            "SQLAlchemyObserverHookErrors",
            _increase(
                "observer_hook_errors_total",
                c.selector(),
                c.hook_errors_window,
                "job, instance, hook",
                0,
            ),
            c.hook_errors_for,
            "info",
            "The pool-observer hooks are failing, so its metrics may be wrong.",
            f"{COUNT} exceptions in the {{{{ $labels.hook }}}} hook of {_where(pool=False)} "
            f"in the last {c.hook_errors_window}; the app is unaffected, the log has the error.",
            POOL_DASHBOARD,
        ),
        Alert(
            "SQLAlchemyMetricsAbsent",
            f"absent(sqlalchemy_pools{c.selector()})",
            c.absent_for,
            "warning",
            "Prometheus gets no pool-observer metrics.",
            "No target {{ with $labels.job }}of job {{ . }} {{ end }}has exported "
            f"sqlalchemy_pools for {c.absent_for}: the app is down, not scraped, "
            "or no longer instrumented.",
            POOL_DASHBOARD,
        ),
        Alert(
            "SQLAlchemyServerIdleInTransaction",
            "max by (job, instance, application_name) (\n"
            f"  pg_observer_idle_in_transaction_max_seconds{c.server()}\n"
            f") > {c.idle_in_transaction_seconds:g}",
            c.idle_in_transaction_for,
            "warning",
            "A PostgreSQL session of the app sits idle in a transaction.",
            "A connection of {{ $labels.application_name }} has been idle in transaction for "
            "{{ $value | humanizeDuration }} (seen by the sidecar of {{ $labels.instance }}, "
            f"threshold {c.idle_in_transaction_seconds:g}s): it holds locks and a pool slot.",
            POOL_DASHBOARD,
            server=True,
        ),
    ]


def migration_alerts(config: MonitoringConfig) -> list[Alert]:
    """Alerts on Alembic migrations: the code and its database disagree, a migration run
    failed or gave up on a lock, a migration runs for too long."""
    c = config
    sel = c.selector()
    by = "job, instance, database"
    return [
        Alert(
            "SQLAlchemyAlembicSchemaDrift",
            f"max by ({by}, database_revision, code_head, state) (\n"
            f"  alembic_schema_revision_info{sel} == 1\n)\n"
            f"and on ({by})\n"
            f"max by ({by}) (alembic_schema_drift{sel}) > 0",
            c.schema_drift_for,
            "warning",
            "The database schema and the running code are at different Alembic revisions.",
            "{{ $labels.job }} on {{ $labels.instance }} expects Alembic head "
            "{{ $labels.code_head }} but database {{ $labels.database }} is at "
            "{{ $labels.database_revision }} ({{ $labels.state }}) for "
            f"{c.schema_drift_for}, longer than a deploy takes: run the migration or roll "
            "the deploy back.",
            POOL_DASHBOARD,
        ),
        Alert(
            "SQLAlchemyAlembicMigrationFailed",
            # The counter keeps earlier runs (textfile and Pushgateway add them in), so each
            # failed run is one more; lock_timeout counts only runs whose retries ran out.
            _increase(
                "alembic_migrations_total",
                c.selector('outcome!="success"'),
                c.migration_failed_window,
                f"{by}, direction, outcome",
                0,
            ),
            c.migration_failed_for,
            "warning",
            "An Alembic migration run failed or gave up waiting for a lock.",
            f"{COUNT} Alembic migration run(s) on database {{{{ $labels.database }}}} "
            "(job {{ $labels.job }}) ended {{ $labels.outcome }} "
            f"({{{{ $labels.direction }}}}) in the last {c.migration_failed_window}: the "
            "deploy's schema change is not applied; read the run's alembic.migration.* lines "
            "(they name the blocker of a lock timeout).",
            POOL_DASHBOARD,
        ),
        Alert(
            "SQLAlchemyAlembicMigrationRunningLong",
            f"max by ({by}) (alembic_migration_running{sel}) > 0",
            c.migration_running_for,
            "warning",
            "An Alembic migration has been running for a long time.",
            "An Alembic migration on database {{ $labels.database }} (job {{ $labels.job }}) "
            f"has been running for more than "
            f"{c.migration_running_for}: a long backfill or index build, a wait that is not a "
            "lock wait, or a run killed before it could publish its end.",
            POOL_DASHBOARD,
        ),
    ]


def alert_groups(config: MonitoringConfig) -> dict[str, Any]:
    """The content of the alerts file."""
    groups = [
        ("pool-observer.pools", pool_alerts(config)),
        ("pool-observer.sessions", session_alerts(config)),
        ("pool-observer.held", held_alerts(config)),
        ("pool-observer.observer", observer_alerts(config)),
        ("pool-observer.migrations", migration_alerts(config)),
        ("pool-observer.fleet", fleet_alerts(config)),
    ]
    return {
        "groups": [
            {"name": name, "rules": [alert.rule(config) for alert in alerts]}
            for name, alerts in groups
        ]
    }


def all_alerts(config: MonitoringConfig) -> list[Alert]:
    """Every alert, in file order."""
    return [
        *pool_alerts(config),
        *session_alerts(config),
        *held_alerts(config),
        *observer_alerts(config),
        *migration_alerts(config),
        *fleet_alerts(config),
    ]
