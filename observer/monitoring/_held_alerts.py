"""Alerts on what is held now: they stay up while a pool is stuck, and name the culprit route.

A rate of new leaks clears once a stuck pool makes no new ones, and the hold histogram only
counts connections that came back: these read the gauges computed at scrape time from the
connections checked out now, and the leaks not resolved yet.
"""

from __future__ import annotations

from observer.monitoring import _rules
from observer.monitoring._alert_base import (
    COUNT,
    POOL_DASHBOARD,
    SESSIONS_DASHBOARD,
    Alert,
    top_origin_of_route,
    where,
)
from observer.monitoring.config import MonitoringConfig

ROUTES_DASHBOARD = "pool-observer-routes"
BY_ROUTE = "job, instance, route"
LEAKED_OPEN = "request_end|too_old"  # the reasons a leaked session can still be open with


def leaked_open(config: MonitoringConfig) -> str:
    """Leaked sessions still open, by (job, instance, route): the leaks found while they were
    open (request_end, too_old) minus those resolved later (closed, garbage-collected)."""
    leaks = "sqlalchemy_orm_session_leaks_total" + config.selector(f'reason=~"{LEAKED_OPEN}"')
    resolved = "sqlalchemy_orm_session_leaks_resolved_total" + config.selector()
    # `or ... * 0`: a route whose first leak is not resolved yet has no resolved series
    return (
        f"sum by ({BY_ROUTE}) ({leaks})\n"
        f"- (sum by ({BY_ROUTE}) ({resolved}) or sum by ({BY_ROUTE}) ({leaks}) * 0)"
    )


def held_idle(config: MonitoringConfig) -> str:
    """The share of each route's connection hold time with no statement running, where the
    route keeps at least ``held_idle_connections`` idle on average, on an instance one of whose
    pools is over ``saturation_ratio`` checked out."""
    c, sel, window = config, config.selector(), config.rate_window
    idle = (
        f"sum by ({BY_ROUTE}) (rate(sqlalchemy_route_connection_idle_seconds_total{sel}[{window}]))"
    )
    hold = (
        f"sum by ({BY_ROUTE}) (rate(sqlalchemy_route_connection_hold_seconds_total{sel}[{window}]))"
    )
    return (
        f"{idle}\n/ {hold}\n> {c.held_idle_ratio:g}\n"
        f"and {idle}\n> {c.held_idle_connections:g}\n"
        f"and on (job, instance) max by (job, instance) ({_rules.utilization(c)})"
        f" > {c.saturation_ratio:g}"
    )


def held_alerts(config: MonitoringConfig) -> list[Alert]:
    """A connection held too long (per route), leaked sessions still open (per route), a pool
    that hands no connection out while some are out, a route holding connections idle while
    a pool is saturated."""
    c = config
    sel = c.selector()
    return [
        Alert(
            "SQLAlchemyConnectionHeldTooLong",
            f"max by ({BY_ROUTE}) (sqlalchemy_route_oldest_checkout_seconds{sel})"
            f" > {c.held_too_long_seconds:g}",
            c.held_too_long_for,
            "warning",
            "A connection has been checked out longer than the leak-detection threshold.",
            "Route {{ $labels.route }} of " + where(pool=False) + " has held a connection for "
            "{{ $value | humanizeDuration }} and still holds it (threshold "
            f"{c.held_too_long_seconds:g}s): a leaked session or connection, or a connection "
            "kept across slow work; the pool has one connection less until it comes back.",
            ROUTES_DASHBOARD,
        ),
        Alert(
            "SQLAlchemyLeakedSessionsOpen",
            f"{leaked_open(c)}\n> 0",
            c.leaked_open_for,
            "warning",
            "ORM sessions reported as leaked are still open.",
            f"{COUNT} sessions opened by route {{{{ $labels.route }}}} of {where(pool=False)} "
            "leaked and are still open (neither closed nor garbage-collected), each holding "
            "its transaction and maybe a connection." + top_origin_of_route(LEAKED_OPEN, None),
            SESSIONS_DASHBOARD,
        ),
        Alert(
            "SQLAlchemyPoolStuck",
            f"max by ({_rules.POOL}) (sqlalchemy_pool_checked_out_connections{sel}) > 0\n"
            f"and on ({_rules.POOL})\n"
            f"sum by ({_rules.POOL}) (increase(sqlalchemy_pool_checkouts_total{sel}"
            f"[{c.pool_stuck_window}])) == 0",
            c.pool_stuck_for,
            "critical",
            "A SQLAlchemy pool has connections out and hands none out.",
            f"{where()} has {COUNT} connections checked out and made no checkout in the last "
            f"{c.pool_stuck_window}: the connections out are not coming back, and requests "
            "that need one wait and time out. See SQLAlchemyConnectionHeldTooLong for the "
            "route that holds them.",
            POOL_DASHBOARD,
        ),
        Alert(
            "SQLAlchemyRouteHoldsConnectionsIdle",
            held_idle(c),
            c.held_idle_for,
            "warning",
            "A route holds connections idle, with no statement running, while a pool is saturated.",
            "Route {{ $labels.route }} of " + where(pool=False) + " held its connections with "
            "no statement running for {{ $value | humanizePercentage }} of their hold time over "
            f"the last {c.rate_window}, while a pool there is over {c.saturation_ratio:.0%} "
            "checked out: it keeps a transaction open across non-database awaits (an HTTP "
            "call, a queue, a sleep). The pool.held_idle log names the line where database "
            "work resumed; do the slow await before or after the transaction.",
            ROUTES_DASHBOARD,
        ),
    ]
