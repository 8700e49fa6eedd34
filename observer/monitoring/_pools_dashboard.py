"""The pool overview dashboard, with the PostgreSQL server view of the sidecar."""

from __future__ import annotations

from observer.monitoring import _rules
from observer.monitoring._dashboard_parts import BY_POOL, RATE, board, new_layout, quantiles
from observer.monitoring._fleet_panels import fleet_row
from observer.monitoring._held_panels import held_by_route, oldest_by_pool, oldest_by_route
from observer.monitoring._panels import (
    POOL,
    Json,
    Layout,
    annotation,
    heatmap,
    m,
    row,
    server_m,
    stat,
    targets,
    timeseries,
)
from observer.monitoring.config import MonitoringConfig

_OUT = m("sqlalchemy_pool_checked_out_connections")
_CAP = f"({m('sqlalchemy_pool_max_connections')} > 0)"
_LEGEND = "{{instance}} {{pool}}"


def pools(config: MonitoringConfig) -> Json:
    """Pool overview: saturation, waits, hold time, errors, alerts and the server's view."""
    layout = new_layout()
    layout.add(*_saturation_row(config))
    layout.add(*fleet_row(config))
    layout.add(
        row("Held now: who holds the connections right now"),
        oldest_by_pool(_LEGEND, BY_POOL),
        held_by_route(width=8),
        oldest_by_route(width=8),
    )
    layout.add(*_wait_and_hold_row())
    layout.add(*_errors_row())
    layout.add(*_churn_panels())
    _server_row(layout, config)
    return board(
        config,
        "pool-observer-pools",
        "pool-observer / Connection pools",
        "SQLAlchemy connection pools: saturation, waits, hold time, errors.",
        layout,
        pool=True,
        server=True,
        annotations=migration_annotations(config),
    )


def _saturation_row(config: MonitoringConfig) -> tuple[Json, ...]:
    """How full the pools are and who waits: stats, then connections against capacity."""
    return (
        row("Saturation"),
        stat(
            "Busiest pool utilisation",
            "Highest share of a pool's connections checked out (per worker in multiprocess "
            "mode), from the recording rule the saturation alerts read: one series per pool "
            "however many workers. Unbounded pools (max_overflow=-1) have no capacity and are "
            "left out.",
            "percentunit",
            f"max({_rules.utilization(config)}{{{POOL}}})",
            steps=[("green", None), ("orange", config.saturation_ratio), ("red", 1)],
        ),
        stat(
            "Waiting requests",
            "Callers waiting for a connection right now, summed over the selected pools.",
            "short",
            f"sum({m('sqlalchemy_pool_waiting_requests')})",
            steps=[("green", None), ("orange", 1)],
        ),
        stat(
            "Checkout timeouts",
            "Checkouts per second that gave up after pool_timeout: requests that failed.",
            "cps",
            f"sum(rate({m('sqlalchemy_pool_checkout_timeouts_total')}{RATE}))",
            steps=[("green", None), ("red", 0.001)],
        ),
        stat(
            "Live pools",
            "Connection pools alive in the selected processes; it should stay at the number "
            "of engines. A climbing count means an engine is created per request.",
            "short",
            f"sum({m('sqlalchemy_pools', pool=False)})",
        ),
        timeseries(
            "Connections vs capacity",
            "Checked-out, idle and overflow connections of each pool, with pool_size and "
            "pool_size + max_overflow as dashed capacity lines.",
            "short",
            targets(
                (f"sum by ({BY_POOL}) ({_OUT})", f"{_LEGEND} checked out"),
                (
                    f"sum by ({BY_POOL}) ({m('sqlalchemy_pool_checked_in_connections')})",
                    f"{_LEGEND} idle",
                ),
                (
                    f"sum by ({BY_POOL}) ({m('sqlalchemy_pool_overflow_connections')})",
                    f"{_LEGEND} overflow",
                ),
                (
                    f"sum by ({BY_POOL}) ({m('sqlalchemy_pool_size')})",
                    f"{_LEGEND} pool_size capacity",
                ),
                (f"sum by ({BY_POOL}) ({_CAP})", f"{_LEGEND} max capacity"),
            ),
            capacity=True,
        ),
        timeseries(
            "Waiting requests",
            "Callers waiting for a connection. Any sustained wait means the pool is too small "
            "or connections are held too long (see the Routes dashboard for who holds them).",
            "short",
            targets((f"sum by ({BY_POOL}) ({m('sqlalchemy_pool_waiting_requests')})", _LEGEND)),
        ),
    )


def _wait_and_hold_row() -> tuple[Json, ...]:
    """How long a connection takes to get, to open, and how long it is kept."""
    return (
        row("Checkout wait and hold time"),
        heatmap(
            "Checkout wait",
            "How long getting a connection took, waiting and timeouts included.",
            "sum by (le) (increase("
            f"{m('sqlalchemy_pool_checkout_duration_seconds_bucket')}{RATE}))",
        ),
        timeseries(
            "Checkout wait p50 / p99",
            "Median and 99th percentile time to get a connection from the pool.",
            "s",
            quantiles("sqlalchemy_pool_checkout_duration_seconds", BY_POOL),
        ),
        timeseries(
            "Connection hold p50 / p99",
            "How long connections stay checked out (checkout to checkin). Long holds starve "
            "other requests.",
            "s",
            quantiles("sqlalchemy_pool_connection_hold_seconds", BY_POOL),
        ),
        timeseries(
            "New connection time p50 / p99",
            "Time to open a new database connection (TCP, TLS, authentication).",
            "s",
            quantiles("sqlalchemy_pool_connect_duration_seconds", BY_POOL),
        ),
    )


def _errors_row() -> tuple[Json, ...]:
    """Checkouts that failed and connections closed or lost."""
    return (
        row("Errors and churn"),
        timeseries(
            "Checkout timeouts",
            "Checkouts per second that timed out: each one is a failed request.",
            "cps",
            targets(
                (
                    f"sum by ({BY_POOL}) "
                    f"(rate({m('sqlalchemy_pool_checkout_timeouts_total')}{RATE}))",
                    _LEGEND,
                )
            ),
            width=8,
        ),
        timeseries(
            "Connections closed, by reason",
            "Connections closed per second: invalidated (errors, server restarts), detached, "
            "garbage_collected (never returned by the app), closed (recycle, overflow).",
            "cps",
            targets(
                (
                    f"sum by ({BY_POOL}, reason) "
                    f"(rate({m('sqlalchemy_pool_connections_closed_total')}{RATE}))",
                    f"{_LEGEND} {{{{reason}}}}",
                )
            ),
            width=8,
            stack=True,
        ),
        timeseries(
            "Reclaimed by the garbage collector",
            "Checked-out connections the garbage collector took back because the app never "
            "returned them: a connection leak.",
            "cps",
            targets(
                (
                    f"sum by ({BY_POOL}) "
                    f"(rate({m('sqlalchemy_pool_connections_reclaimed_total')}{RATE}))",
                    _LEGEND,
                )
            ),
            width=8,
        ),
    )


def _churn_panels() -> tuple[Json, ...]:
    """The rest of the errors-and-churn row: new connections, engines, the observer's hooks."""
    return (
        timeseries(
            "Checkouts and new connections",
            "Checkouts and newly opened connections per second. New connections should be "
            "rare once the pool is warm; many mean recycling or invalidation churn.",
            "cps",
            targets(
                (
                    f"sum by ({BY_POOL}) (rate({m('sqlalchemy_pool_checkouts_total')}{RATE}))",
                    f"{_LEGEND} checkouts",
                ),
                (
                    f"sum by ({BY_POOL}) "
                    f"(rate({m('sqlalchemy_pool_connections_opened_total')}{RATE}))",
                    f"{_LEGEND} opened",
                ),
            ),
            width=8,
        ),
        timeseries(
            "Live pools",
            "Connection pools alive per instance (every engine has one; dispose() replaces "
            "it), and pools created per interval: after startup both stay flat.",
            "short",
            targets(
                (f"sum by (instance) ({m('sqlalchemy_pools', pool=False)})", "{{instance}} live"),
                (
                    "sum by (instance) (increase("
                    f"{m('sqlalchemy_pools_created_total', pool=False)}{RATE}))",
                    "{{instance}} created",
                ),
            ),
            width=8,
        ),
        timeseries(
            "Observer hook errors",
            "Exceptions swallowed inside pool-observer's hooks, by hook. The app is "
            "unaffected; the metrics may be off. The log has the traceback.",
            "cps",
            targets(
                (
                    "sum by (instance, hook) "
                    f"(rate({m('observer_hook_errors_total', pool=False)}{RATE}))",
                    "{{instance}} {{hook}}",
                )
            ),
            width=8,
        ),
    )


def migration_annotations(config: MonitoringConfig) -> tuple[Json, ...]:
    """Markers where Alembic migrations ran (docs/alembic.md). Their metrics come from the
    migration process (a Pushgateway or node_exporter's textfile collector), not from the
    app's job, so they are selected by the job selector only, not by $job / $instance."""
    last = f"alembic_migration_last_timestamp_seconds{{{config.job_selector}}}"
    running = f"alembic_migration_running{{{config.job_selector}}}"
    return (
        annotation(
            "Alembic migrations",
            # A revision's series appears (or its timestamp changes) when it has just run.
            f"max by (revision, direction, outcome) (\n  ({last} unless {last} offset 1m)\n"
            f"  or changes({last}[1m]) > 0\n)",
            "{{direction}} {{revision}}: {{outcome}}",
            "purple",
            tags="direction,outcome",
        ),
        annotation(
            "Migration running",
            f"max by (job, instance) ({running}) > 0",
            "Alembic migration running ({{job}} {{instance}})",
            "orange",
        ),
    )


def _server_row(layout: Layout, config: MonitoringConfig) -> None:
    """The sidecar's view of PostgreSQL, filtered by the server_job/server_instance variables."""
    s = server_m

    layout.add(
        row("PostgreSQL server view (observer sidecar)"),
        timeseries(
            "Server connections by state",
            "Backends in pg_stat_activity by state, as the sidecar sees them. Many "
            "'idle in transaction' backends mean sessions left open.",
            "short",
            targets(
                (
                    f"sum by (instance, application_name, state) ({s('pg_stat_activity_count')})",
                    "{{application_name}} {{state}}",
                )
            ),
            width=6,
            stack=True,
        ),
        timeseries(
            "Oldest idle-in-transaction",
            "Age of the oldest transaction sitting idle: it holds locks and a pool connection "
            f"(the alert threshold is {config.idle_in_transaction_seconds:g} s).",
            "s",
            targets(
                (
                    "max by (instance, application_name) "
                    f"({s('pg_observer_idle_in_transaction_max_seconds')})",
                    "{{application_name}}",
                ),
                (
                    f"max by (instance, state) ({s('pg_stat_activity_max_tx_duration')})",
                    "longest transaction: {{state}}",
                ),
            ),
            width=6,
        ),
        timeseries(
            "Backends waiting on locks",
            "Backends waiting on a lock: a migration or a long transaction blocking the app "
            "shows here (pg_blocking_pids names the blocker).",
            "short",
            targets(
                (
                    f"sum by (instance, datname) ({s('pg_observer_lock_waiting_backends')})",
                    "{{datname}}",
                )
            ),
            width=6,
        ),
        timeseries(
            "Longest lock wait",
            "How long the longest-waiting backend has waited for a lock.",
            "s",
            targets(
                (
                    f"max by (instance, datname) ({s('pg_observer_lock_wait_max_seconds')})",
                    "{{datname}}",
                )
            ),
            width=6,
        ),
    )
    up = stat(
        "Server reachable",
        "1 when the sidecar could query PostgreSQL at its last scrape.",
        "short",
        f"min({s('pg_up')})",
        steps=[("red", None), ("green", 1)],
        width=24,
        height=3,
    )
    layout.add(up)
