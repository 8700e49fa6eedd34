"""The Grafana dashboards: pool overview (with the server view), sessions and leaks, routes."""

from __future__ import annotations

from observer.monitoring.config import MonitoringConfig
from observer.monitoring.panels import (
    Json,
    Layout,
    alert_list,
    dashboard,
    datasource_variable,
    heatmap,
    m,
    query_variable,
    row,
    stat,
    target,
    targets,
    timeseries,
)

RATE = "[$__rate_interval]"
BY_POOL = "instance, pool"


def _variables(config: MonitoringConfig, *, pool: bool) -> list[Json]:
    sel = config.job_selector
    variables = [
        datasource_variable(),
        query_variable("job", "Job", f"label_values(sqlalchemy_pools{{{sel}}}, job)"),
        query_variable(
            "instance",
            "Instance",
            f'label_values(sqlalchemy_pools{{{sel}, job=~"$job"}}, instance)',
        ),
    ]
    if pool:
        variables.append(
            query_variable(
                "pool",
                "Pool",
                f"label_values(sqlalchemy_pool_max_connections{{{sel}, "
                'job=~"$job", instance=~"$instance"}, pool)',
            )
        )
    return variables


def _links(config: MonitoringConfig) -> list[Json]:
    common = {"icon": "external link", "tooltip": "", "tags": [], "asDropdown": False}
    return [
        {
            **common,
            "icon": "doc",
            "includeVars": False,
            "keepTime": False,
            "targetBlank": True,
            "title": "Runbooks",
            "type": "link",
            "url": config.runbook_url,
        },
        {
            **common,
            "asDropdown": True,
            "includeVars": True,
            "keepTime": True,
            "tags": ["pool-observer"],
            "targetBlank": False,
            "title": "pool-observer dashboards",
            "type": "dashboards",
            "url": "",
        },
    ]


def _quantiles(metric: str, by: str, *, pool: bool = True) -> list[Json]:
    legend = "{{instance}} {{pool}}" if pool else "{{instance}}"
    return targets(
        *(
            (
                f"histogram_quantile({q}, sum by ({by}, le) "
                f"(rate({m(metric + '_bucket', pool=pool)}{RATE})))",
                f"{legend} p{int(q * 100)}",
            )
            for q in (0.5, 0.99)
        )
    )


def pools(config: MonitoringConfig) -> Json:
    """Pool overview: saturation, waits, hold time, errors, alerts and the server's view."""
    out = m("sqlalchemy_pool_checked_out_connections")
    cap = f"({m('sqlalchemy_pool_max_connections')} > 0)"
    legend = "{{instance}} {{pool}}"
    layout = Layout()
    layout.add(
        row("Saturation"),
        stat(
            "Busiest pool utilisation",
            "Highest share of a pool's connections checked out (per worker in multiprocess "
            "mode). Unbounded pools (max_overflow=-1) have no capacity and are left out.",
            "percentunit",
            f"max(max by (job, instance, pool) ({out} / {cap}))",
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
                (f"sum by ({BY_POOL}) ({out})", f"{legend} checked out"),
                (
                    f"sum by ({BY_POOL}) ({m('sqlalchemy_pool_checked_in_connections')})",
                    f"{legend} idle",
                ),
                (
                    f"sum by ({BY_POOL}) ({m('sqlalchemy_pool_overflow_connections')})",
                    f"{legend} overflow",
                ),
                (
                    f"sum by ({BY_POOL}) ({m('sqlalchemy_pool_size')})",
                    f"{legend} pool_size capacity",
                ),
                (f"sum by ({BY_POOL}) ({cap})", f"{legend} max capacity"),
            ),
            capacity=True,
        ),
        timeseries(
            "Waiting requests",
            "Callers waiting for a connection. Any sustained wait means the pool is too small "
            "or connections are held too long (see the Routes dashboard for who holds them).",
            "short",
            targets((f"sum by ({BY_POOL}) ({m('sqlalchemy_pool_waiting_requests')})", legend)),
        ),
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
            _quantiles("sqlalchemy_pool_checkout_duration_seconds", BY_POOL),
        ),
        timeseries(
            "Connection hold p50 / p99",
            "How long connections stay checked out (checkout to checkin). Long holds starve "
            "other requests.",
            "s",
            _quantiles("sqlalchemy_pool_connection_hold_seconds", BY_POOL),
        ),
        timeseries(
            "New connection time p50 / p99",
            "Time to open a new database connection (TCP, TLS, authentication).",
            "s",
            _quantiles("sqlalchemy_pool_connect_duration_seconds", BY_POOL),
        ),
        row("Errors and churn"),
        timeseries(
            "Checkout timeouts",
            "Checkouts per second that timed out: each one is a failed request.",
            "cps",
            targets(
                (
                    f"sum by ({BY_POOL}) "
                    f"(rate({m('sqlalchemy_pool_checkout_timeouts_total')}{RATE}))",
                    legend,
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
                    f"{legend} {{{{reason}}}}",
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
                    legend,
                )
            ),
            width=8,
        ),
        timeseries(
            "Checkouts and new connections",
            "Checkouts and newly opened connections per second. New connections should be "
            "rare once the pool is warm; many mean recycling or invalidation churn.",
            "cps",
            targets(
                (
                    f"sum by ({BY_POOL}) (rate({m('sqlalchemy_pool_checkouts_total')}{RATE}))",
                    f"{legend} checkouts",
                ),
                (
                    f"sum by ({BY_POOL}) "
                    f"(rate({m('sqlalchemy_pool_connections_opened_total')}{RATE}))",
                    f"{legend} opened",
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
        row("Alerts"),
        alert_list(
            "pool-observer alerts",
            "SQLAlchemy* alerts pending or firing now; each links to its runbook.",
        ),
    )
    _server_row(layout, config)
    return dashboard(
        "pool-observer-pools",
        "pool-observer / Connection pools",
        "SQLAlchemy connection pools: saturation, waits, hold time, errors.",
        _variables(config, pool=True),
        layout,
        _links(config),
    )


def _server_row(layout: Layout, config: MonitoringConfig) -> None:
    def s(metric: str) -> str:
        return m(metric, pool=False)

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
            width=8,
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
            width=8,
        ),
        timeseries(
            "Lock waits",
            "Backends waiting on a lock and the longest wait: a migration or a long "
            "transaction blocking the app shows here (pg_blocking_pids names the blocker).",
            "short",
            targets(
                (
                    f"sum by (instance, datname) ({s('pg_observer_lock_waiting_backends')})",
                    "{{datname}} waiting backends",
                ),
                (
                    f"max by (instance, datname) ({s('pg_observer_lock_wait_max_seconds')})",
                    "{{datname}} longest wait (s)",
                ),
            ),
            width=8,
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


def sessions(config: MonitoringConfig) -> Json:
    """Sessions and leaks: open sessions with their floor, leaks by reason and route."""
    opened = m("sqlalchemy_orm_sessions_open", pool=False)
    leaks = m("sqlalchemy_orm_session_leaks_total", pool=False)
    layout = Layout()
    layout.add(
        row("Sessions"),
        stat(
            "Open sessions",
            "ORM sessions holding a transaction (and so possibly a connection) right now.",
            "short",
            f"sum({opened})",
        ),
        stat(
            "Session leaks",
            "Sessions per second reported as leaked (left open at the end of a request, "
            "garbage-collected while open, or open too long).",
            "cps",
            f"sum(rate({leaks}{RATE}))",
            steps=[("green", None), ("red", 0.001)],
        ),
        stat(
            "Sessions opened",
            "ORM sessions that started a transaction, per second.",
            "cps",
            f"sum(rate({m('sqlalchemy_orm_sessions_opened_total', pool=False)}{RATE}))",
        ),
        stat(
            "Connections reclaimed by GC",
            "Checked-out connections the garbage collector took back, per second.",
            "cps",
            f"sum(rate({m('sqlalchemy_pool_connections_reclaimed_total', pool=False)}{RATE}))",
            steps=[("green", None), ("red", 0.001)],
        ),
        timeseries(
            "Open sessions and their floor",
            f"Open sessions and their minimum over {config.leak_floor_window}. Bursts come and "
            "go; a floor that keeps rising is a leak (SQLAlchemySessionLeakSuspected).",
            "short",
            targets(
                (f"sum by (instance) ({opened})", "{{instance}} open"),
                (
                    f"min by (instance) (min_over_time({opened}[{config.leak_floor_window}]))",
                    f"{{{{instance}}}} floor ({config.leak_floor_window} minimum)",
                ),
            ),
            width=24,
        ),
        row("Leaks"),
        timeseries(
            "Leaks by reason",
            "request_end: still open when the response finished; garbage_collected: dropped "
            "while open; too_old: open longer than the threshold.",
            "cps",
            targets(
                (f"sum by (instance, reason) (rate({leaks}{RATE}))", "{{instance}} {{reason}}")
            ),
            stack=True,
        ),
        timeseries(
            "Leaks by route (top 10)",
            "Which routes leak sessions. The leak log events carry the code location that "
            "opened each session ('origin').",
            "cps",
            targets((f"topk(10, sum by (route) (rate({leaks}{RATE})))", "{{route}}")),
            stack=True,
        ),
        row("Session lifetime"),
        heatmap(
            "Session duration",
            "How long sessions stay open (transaction start to end).",
            "sum by (le) (increase("
            f"{m('sqlalchemy_orm_session_duration_seconds_bucket', pool=False)}{RATE}))",
        ),
        timeseries(
            "Session duration p50 / p99",
            "Median and 99th percentile session duration.",
            "s",
            _quantiles("sqlalchemy_orm_session_duration_seconds", "instance", pool=False),
        ),
        timeseries(
            "Sessions opened and closed",
            "Sessions opened and closed per second: the gap between them is what piles up.",
            "cps",
            targets(
                (
                    "sum by (instance) "
                    f"(rate({m('sqlalchemy_orm_sessions_opened_total', pool=False)}{RATE}))",
                    "{{instance}} opened",
                ),
                (
                    "sum by (instance) "
                    f"(rate({m('sqlalchemy_orm_sessions_closed_total', pool=False)}{RATE}))",
                    "{{instance}} closed",
                ),
            ),
        ),
        timeseries(
            "Connections reclaimed by GC",
            "Checked-out connections the garbage collector took back: the app never returned "
            "them (SQLAlchemyPoolConnectionsReclaimed).",
            "cps",
            targets(
                (
                    "sum by (instance, pool) (rate("
                    f"{m('sqlalchemy_pool_connections_reclaimed_total', pool=False)}{RATE}))",
                    "{{instance}} {{pool}}",
                )
            ),
        ),
        row("Alerts"),
        alert_list("pool-observer alerts", "SQLAlchemy* alerts pending or firing now."),
    )
    return dashboard(
        "pool-observer-sessions",
        "pool-observer / Sessions and leaks",
        "SQLAlchemy ORM sessions: open sessions, their floor, leaks by reason and route.",
        _variables(config, pool=False),
        layout,
        _links(config),
    )


def routes(config: MonitoringConfig) -> Json:
    """Routes: which routes hold connections (culprits) and which wait for them (victims)."""
    hold = m("sqlalchemy_route_connection_hold_seconds_total", pool=False)
    wait = m("sqlalchemy_route_checkout_wait_seconds_total", pool=False)
    checkouts = m("sqlalchemy_route_checkouts_total", pool=False)
    layout = Layout()
    layout.add(
        row("Culprits: who holds the connections"),
        timeseries(
            "Connections held, by route (top 10)",
            "Connection-seconds used per second by each route = the average number of "
            "connections it holds. The dashed line is the total capacity of the pools. "
            "'none' is work outside any request, 'unmatched' paths no route matched.",
            "short",
            [
                target(f"topk(10, sum by (route) (rate({hold}{RATE})))", "{{route}}"),
                target(
                    f"sum({m('sqlalchemy_pool_max_connections', pool=False)} > 0)",
                    "capacity",
                    ref="B",
                ),
            ],
            stack=False,
            capacity=True,
        ),
        timeseries(
            "Mean hold per checkout, by route (top 10)",
            "How long each route keeps a connection per checkout, on average.",
            "s",
            targets(
                (
                    f"topk(10, sum by (route) (rate({hold}{RATE})) "
                    f"/ sum by (route) (rate({checkouts}{RATE})))",
                    "{{route}}",
                )
            ),
        ),
        row("Victims: who waits for a connection"),
        timeseries(
            "Requests waiting, by route (top 10)",
            "Seconds spent waiting for a connection per second by each route = the average "
            "number of its callers waiting.",
            "short",
            targets((f"topk(10, sum by (route) (rate({wait}{RATE})))", "{{route}}")),
            stack=True,
        ),
        timeseries(
            "Mean wait per checkout, by route (top 10)",
            "How long each route waits for a connection per checkout, on average.",
            "s",
            targets(
                (
                    f"topk(10, sum by (route) (rate({wait}{RATE})) "
                    f"/ sum by (route) (rate({checkouts}{RATE})))",
                    "{{route}}",
                )
            ),
        ),
        row("Traffic and leaks"),
        timeseries(
            "Checkouts by route (top 10)",
            "Connection checkouts per second by route.",
            "cps",
            targets((f"topk(10, sum by (route) (rate({checkouts}{RATE})))", "{{route}}")),
        ),
        timeseries(
            "Session leaks by route (top 10)",
            "Sessions leaked per second by route; see the Sessions and leaks dashboard.",
            "cps",
            targets(
                (
                    "topk(10, sum by (route) (rate("
                    f"{m('sqlalchemy_orm_session_leaks_total', pool=False)}{RATE})))",
                    "{{route}}",
                )
            ),
        ),
        row("Alerts"),
        alert_list("pool-observer alerts", "SQLAlchemy* alerts pending or firing now."),
    )
    return dashboard(
        "pool-observer-routes",
        "pool-observer / Routes: culprits and victims",
        "Which routes hold the pool's connections and which routes wait for them.",
        _variables(config, pool=False),
        layout,
        _links(config),
    )


def all_dashboards(config: MonitoringConfig) -> dict[str, Json]:
    """File stem -> dashboard."""
    return {
        "pool-observer-pools": pools(config),
        "pool-observer-sessions": sessions(config),
        "pool-observer-routes": routes(config),
    }
