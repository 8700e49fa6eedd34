"""Who holds connections now: the held-now signals, read from the trackers' checkout stamps."""

from __future__ import annotations

from collections.abc import Iterable

from observer.attribution._route_metrics import RouteMetrics
from observer.attribution._scope import route_of
from observer.metrics._collectors import HeldNow
from observer.metrics._families import Metrics
from observer.pool._base import TrackerParts


def held_now(trackers: Iterable[TrackerParts], routes: RouteMetrics, now: float) -> HeldNow:
    """The connections checked out of ``trackers``' pools at ``now`` (``perf_counter()``): each
    pool's oldest checkout age, and each route's count and oldest age. Every route counted so
    far is present (0 when it holds none), and so is every pool: a gauge that goes back to 0
    shows the pool recovered, where a vanished series would only show a gap."""
    label = routes.label
    held = dict.fromkeys(routes.labels, 0)
    oldest = dict.fromkeys(held, 0.0)
    pools: list[tuple[str, float]] = []
    for tracker in trackers:
        first = now
        for started, scope, _ in list(tracker.held.values()):  # one C call: a consistent copy
            first = min(first, started)
            route = label(route_of(scope))
            held[route] = held.get(route, 0) + 1
            oldest[route] = max(oldest.get(route, 0.0), now - started)
        pools.append((tracker.name, max(0.0, now - first)))
    return HeldNow(pools, held, oldest)


def push_held_now(metrics: Metrics, now: HeldNow) -> None:
    """Set the held-now gauges (multiprocess mode, where collectors cannot run; the sweeper
    calls this every tick). A no-op in one process, where the collectors read them."""
    if metrics.route_held is not None:
        for route, count in now.routes_held.items():
            metrics.route_held.labels(route).set(count)
    if metrics.pool_oldest is not None:
        for pool, age in now.pools_oldest:
            metrics.pool_oldest.labels(pool).set(age)
    if metrics.route_oldest is not None:
        for route, age in now.routes_oldest.items():
            metrics.route_oldest.labels(route).set(age)
