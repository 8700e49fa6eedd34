"""The held-now panels: who holds connections right now, and the leaks still open, next to the
rates that show who hogged them over time (a connection never returned adds no hold time)."""

from __future__ import annotations

from observer.monitoring._panels import Json, m, stat, targets, timeseries

_HELD = m("sqlalchemy_route_connections_held", pool=False)
_OLDEST = m("sqlalchemy_route_oldest_checkout_seconds", pool=False)
_LEAKS = m("sqlalchemy_orm_session_leaks_total", 'reason=~"request_end|too_old"', pool=False)
_RESOLVED = m("sqlalchemy_orm_session_leaks_resolved_total", pool=False)


def held_by_route(*, width: int = 12) -> Json:
    """Connections checked out now, by the route of the request that checked them out."""
    return timeseries(
        "Held now: connections by route (top 10)",
        "Connections checked out right now, by the route of the request that checked them "
        "out, a connection never returned included ('none': work outside requests). A stuck "
        "pool shows here while the rate panels read 0 (a connection never returned adds no "
        "hold time).",
        "short",
        targets((f"topk(10, sum by (route) ({_HELD}))", "{{route}}")),
        width=width,
        stack=True,
    )


def oldest_by_route(*, width: int = 12) -> Json:
    """The age of the oldest connection each route holds now."""
    return timeseries(
        "Held now: oldest checkout by route (top 10)",
        "How long the oldest connection each route holds right now has been checked out. A "
        "line that keeps climbing is a connection that is not coming back "
        "(SQLAlchemyConnectionHeldTooLong).",
        "s",
        targets((f"topk(10, max by (route) ({_OLDEST}))", "{{route}}")),
        width=width,
    )


def oldest_by_pool(legend: str, by: str) -> Json:
    """The age of each pool's oldest connection checked out now."""
    return timeseries(
        "Held now: oldest checkout by pool",
        "How long each pool's oldest connection checked out right now has been out (0 when "
        "none is). Unlike the hold percentiles, it grows while a connection is never returned.",
        "s",
        targets((f"max by ({by}) ({m('sqlalchemy_pool_oldest_checkout_seconds')})", legend)),
        width=8,
    )


def leaked_open_expr(by: str) -> str:
    """Leaked sessions still open: leaks found while open minus those resolved since."""
    return (
        f"sum by ({by}) ({_LEAKS}) - (sum by ({by}) ({_RESOLVED}) or sum by ({by}) ({_LEAKS}) * 0)"
    )


def leaked_open_stat() -> Json:
    """The current damage of leaks: leaked sessions still open."""
    return stat(
        "Leaked sessions open now",
        "Sessions reported as leaked (request_end, too_old) that are still open: neither "
        "closed nor garbage-collected since. Each holds its transaction and maybe a connection.",
        "short",
        f"sum({_LEAKS}) - (sum({_RESOLVED}) or vector(0))",
        steps=[("green", None), ("red", 1)],
    )


def leaked_open_by_route() -> Json:
    """Leaked sessions still open, by route."""
    return timeseries(
        "Leaked sessions open now, by route",
        "Leaked sessions (request_end, too_old) still open, by the route that opened them "
        "(SQLAlchemyLeakedSessionsOpen). It goes down as they are closed or collected "
        "(sqlalchemy_orm_session_leaks_resolved_total).",
        "short",
        targets((leaked_open_expr("route"), "{{route}}")),
        stack=True,
    )
