"""The sessions and leaks dashboard."""

from __future__ import annotations

from observer.monitoring._dashboard_parts import RATE, board, new_layout, quantiles
from observer.monitoring._held_panels import leaked_open_by_route, leaked_open_stat, oldest_by_route
from observer.monitoring._origin_table import leaking_lines_table
from observer.monitoring._panels import (
    Json,
    heatmap,
    m,
    row,
    stat,
    targets,
    timeseries,
)
from observer.monitoring.config import MonitoringConfig

_OPENED = m("sqlalchemy_orm_sessions_open", pool=False)
_LEAKS = m("sqlalchemy_orm_session_leaks_total", pool=False)


def sessions(config: MonitoringConfig) -> Json:
    """Sessions and leaks: open sessions with their floor, leaks by reason and route."""
    layout = new_layout()
    layout.add(*_sessions_row(config))
    layout.add(*_leaks_row(config))
    layout.add(*_lifetime_row())
    return board(
        config,
        "pool-observer-sessions",
        "pool-observer / Sessions and leaks",
        "SQLAlchemy ORM sessions: open sessions, their floor, leaks by reason and route.",
        layout,
    )


def _sessions_row(config: MonitoringConfig) -> tuple[Json, ...]:
    """Open, opened and leaked sessions now, and the floor of open sessions over time."""
    return (
        row("Sessions"),
        stat(
            "Open sessions",
            "ORM sessions holding a transaction (and so possibly a connection) right now.",
            "short",
            f"sum({_OPENED})",
        ),
        stat(
            "Session leaks",
            "Sessions per second reported as leaked (left open at the end of a request, "
            "garbage-collected while open, or open too long).",
            "cps",
            f"sum(rate({_LEAKS}{RATE}))",
            steps=[("green", None), ("red", 0.001)],
        ),
        leaked_open_stat(),
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
                (f"sum by (instance) ({_OPENED})", "{{instance}} open"),
                (
                    f"min by (instance) (min_over_time({_OPENED}[{config.leak_floor_window}]))",
                    f"{{{{instance}}}} floor ({config.leak_floor_window} minimum)",
                ),
            ),
            width=24,
        ),
    )


def _leaks_row(config: MonitoringConfig) -> tuple[Json, ...]:
    """The damage now (leaked sessions still open, connections held and for how long, by
    route), then new leaks by reason and by route, and the lines of code that leaked."""
    return (
        row("Leaks"),
        leaked_open_by_route(),
        oldest_by_route(),
        timeseries(
            "New leaks by reason",
            "Each leaked session counts once, under the reason it was first found with. "
            "request_end: still open when the response finished; garbage_collected: dropped "
            "while open; too_old: open longer than the threshold.",
            "cps",
            targets(
                (f"sum by (instance, reason) (rate({_LEAKS}{RATE}))", "{{instance}} {{reason}}")
            ),
            stack=True,
        ),
        timeseries(
            "New leaks by route (top 10)",
            "Which routes leak sessions; the table below names the lines of code that leaked.",
            "cps",
            targets((f"topk(10, sum by (route) (rate({_LEAKS}{RATE})))", "{{route}}")),
            stack=True,
        ),
        leaking_lines_table(config),
    )


def _lifetime_row() -> tuple[Json, ...]:
    """How long sessions stay open, and the gap between opened and closed."""
    return (
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
            quantiles("sqlalchemy_orm_session_duration_seconds", "instance", pool=False),
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
    )
