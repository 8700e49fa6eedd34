"""Who holds connections now: the held-now signals, read from the trackers' checkout stamps."""

from __future__ import annotations

from collections.abc import Iterable

from observer._types import ConnectionSnapshot
from observer.attribution._route_metrics import RouteMetrics
from observer.attribution._scope import route_of
from observer.metrics._collectors import HeldNow
from observer.metrics._families import Metrics
from observer.pool._base import TrackerParts
from observer.pool._handout import session_origins

MAX_CONNECTIONS_SHOWN = 200
"""At most this many checked-out connections in a snapshot (the longest held)."""


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


def connections_now(
    trackers: Iterable[TrackerParts], routes: RouteMetrics, now: float
) -> list[ConnectionSnapshot]:
    """The connections checked out of ``trackers``' pools at ``now``, longest held first (at
    most :data:`MAX_CONNECTIONS_SHOWN`): pool, route, request, hold so far, and whether a
    statement runs on it now (``executing``) or not (``idle``) and since when. Read-only."""
    found: list[ConnectionSnapshot] = []
    for tracker in trackers:
        for stamp in list(tracker.held.values()):  # one C call: a consistent copy
            started, scope, _ = stamp
            state, seconds = tracker._idle.activity(stamp, now)
            found.append(
                ConnectionSnapshot(
                    pool=tracker.name,
                    route=routes.label(route_of(scope)),
                    request_id=scope.request_id if scope is not None else None,
                    held_seconds=round(max(0.0, now - started), 3),
                    state=state,
                    state_seconds=round(seconds, 3),
                    session_origins=session_origins(scope),
                )
            )
    found.sort(key=lambda c: -c["held_seconds"])
    return found[:MAX_CONNECTIONS_SHOWN]
