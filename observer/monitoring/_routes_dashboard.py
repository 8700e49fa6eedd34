"""The routes dashboard: culprits (who holds connections) and victims (who waits)."""

from __future__ import annotations

from observer.monitoring._dashboard_parts import RATE, board, new_layout
from observer.monitoring._held_panels import held_by_route, oldest_by_route
from observer.monitoring._panels import (
    Json,
    m,
    row,
    target,
    targets,
    timeseries,
)
from observer.monitoring.config import MonitoringConfig

_HOLD = m("sqlalchemy_route_connection_hold_seconds_total", pool=False)
_WAIT = m("sqlalchemy_route_checkout_wait_seconds_total", pool=False)
_CHECKOUTS = m("sqlalchemy_route_checkouts_total", pool=False)
_IDLE = m("sqlalchemy_route_connection_idle_seconds_total", pool=False)


def routes(config: MonitoringConfig) -> Json:
    """Routes: which routes hold connections (culprits) and which wait for them (victims)."""
    layout = new_layout()
    layout.add(*_culprits_row())
    layout.add(*_held_idle_panels())
    layout.add(*_victims_row())
    layout.add(*_traffic_row())
    return board(
        config,
        "pool-observer-routes",
        "pool-observer / Routes: culprits and victims",
        "Which routes hold the pool's connections and which routes wait for them.",
        layout,
    )


def _culprits_row() -> tuple[Json, ...]:
    """Who holds connections now (count and oldest checkout), next to who hogged them over
    time (connection time against the pools' capacity, and per checkout)."""
    return (
        row("Culprits: who holds the connections"),
        held_by_route(),
        oldest_by_route(),
        timeseries(
            "Over time: connections held, by route (top 10)",
            "Connection-seconds used per second by each route = the average number of "
            "connections it held (counted when they come back). The dashed line is the total "
            "capacity of the pools. 'none' is work outside any request, 'unmatched' paths no "
            "route matched.",
            "short",
            [
                target(f"topk(10, sum by (route) (rate({_HOLD}{RATE})))", "{{route}}"),
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
                    f"topk(10, sum by (route) (rate({_HOLD}{RATE})) "
                    f"/ sum by (route) (rate({_CHECKOUTS}{RATE})))",
                    "{{route}}",
                )
            ),
        ),
    )


def _held_idle_panels() -> tuple[Json, ...]:
    """Held time split into executing and idle (no statement running) per route: the routes
    that keep connections across non-database awaits (docs/runbooks.md, held idle)."""
    hold, idle = f"sum by (route) (rate({_HOLD}{RATE}))", f"sum by (route) (rate({_IDLE}{RATE}))"
    return (
        timeseries(
            "Held time by route: executing vs idle (top 10)",
            "Connection-seconds per second each route held, split into time a statement (or "
            "COMMIT, ROLLBACK) was running on the connection and time it sat idle in between: "
            "idle is a connection held across a non-database await (an HTTP call, a queue, a "
            "sleep). The pool.held_idle log names the line where database work resumed.",
            "short",
            targets(
                (f"topk(10, {hold} - {idle})", "{{route}} executing"),
                (f"topk(10, {idle})", "{{route}} idle"),
            ),
            stack=True,
        ),
        timeseries(
            "Share of held time idle, by route (top 10)",
            "Of the time each route held connections, the share with no statement running. "
            "High on a route that holds many connections: move the slow await out of the "
            "transaction, or release the connection for it.",
            "percentunit",
            targets((f"topk(10, {idle} / ({hold} > 0))", "{{route}}")),
        ),
    )


def _victims_row() -> tuple[Json, ...]:
    """Time each route spends waiting for a connection, in all and per checkout."""
    return (
        row("Victims: who waits for a connection"),
        timeseries(
            "Requests waiting, by route (top 10)",
            "Seconds spent waiting for a connection per second by each route = the average "
            "number of its callers waiting.",
            "short",
            targets((f"topk(10, sum by (route) (rate({_WAIT}{RATE})))", "{{route}}")),
            stack=True,
        ),
        timeseries(
            "Mean wait per checkout, by route (top 10)",
            "How long each route waits for a connection per checkout, on average.",
            "s",
            targets(
                (
                    f"topk(10, sum by (route) (rate({_WAIT}{RATE})) "
                    f"/ sum by (route) (rate({_CHECKOUTS}{RATE})))",
                    "{{route}}",
                )
            ),
        ),
    )


def _traffic_row() -> tuple[Json, ...]:
    """Checkouts and session leaks by route."""
    return (
        row("Traffic and leaks"),
        timeseries(
            "Checkouts by route (top 10)",
            "Connection checkouts per second by route.",
            "cps",
            targets((f"topk(10, sum by (route) (rate({_CHECKOUTS}{RATE})))", "{{route}}")),
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
    )
