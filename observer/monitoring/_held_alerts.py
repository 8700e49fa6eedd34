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


def held_alerts(config: MonitoringConfig) -> list[Alert]:
    """A connection held too long (per route), leaked sessions still open (per route), a pool
    that hands no connection out while some are out."""
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
    ]
