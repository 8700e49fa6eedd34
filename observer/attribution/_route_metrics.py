"""Per-route counters (who hogs the pool, who waits for it), with a bounded label set."""

from __future__ import annotations

import threading
from typing import NamedTuple

from prometheus_client import Counter

from observer.attribution._scope import NO_ROUTE, RequestScope
from observer.metrics._batching import LOCK, MOVE, Sink, ThreadSums, Unflushed
from observer.metrics._families import Metrics

OTHER_ROUTE = "other"
"""Route label once ``max_routes`` distinct routes have been seen."""


class _Children(NamedTuple):
    checkouts: Counter
    wait: Counter
    hold: Counter
    requests: Counter
    idle: Counter
    sums: ThreadSums  # requests, checkouts, wait, hold, idle of finished requests, per thread


_REQUESTS, _CHECKOUTS, _WAIT, _HOLD, _IDLE = range(5)


class RouteMetrics:
    """Bound route children, created at most ``max_routes`` times (plus ``none`` and ``other``)."""

    def __init__(self, metrics: Metrics, *, max_routes: int) -> None:
        self._metrics = metrics
        self._max_routes = max_routes
        self._lock = threading.Lock()
        self._children: dict[str, _Children] = {}
        # Finished requests' totals are summed per thread and moved into the counters on flush
        # (single process only: see observer/pool/_tracker.py).
        self._batched = not metrics.multiprocess
        self._none = self.children(NO_ROUTE)

    def label(self, route: str) -> str:
        """The label value ``route`` is counted under."""
        if route in self._children or route in (NO_ROUTE, OTHER_ROUTE):
            return route
        special = sum(1 for name in (NO_ROUTE, OTHER_ROUTE) if name in self._children)
        return route if len(self._children) - special < self._max_routes else OTHER_ROUTE

    def children(self, route: str) -> _Children:
        found = self._children.get(route)
        if found is not None:
            return found
        with self._lock:
            label = self.label(route)
            found = self._children.get(label)
            if found is None:
                m = self._metrics
                found = _Children(
                    m.route_checkouts.labels(label),
                    m.route_wait.labels(label),
                    m.route_hold.labels(label),
                    m.route_requests.labels(label),
                    m.route_idle.labels(label),
                    ThreadSums(5),
                )
                self._children[label] = found
            return found

    def count_outside(self, checkouts: float, wait: float, hold: float) -> None:
        """Count work done outside requests (scripts, background tasks) under ``route="none"``.
        The pool trackers sum it per thread and call this when they flush."""
        children = self._none
        if checkouts:
            children.checkouts.inc(checkouts)
        if wait:
            children.wait.inc(wait)
        if hold:
            children.hold.inc(hold)

    def flush(self) -> None:
        """Move the finished requests' totals summed since the last flush into the counters."""
        with LOCK:
            for label, children in list(self._children.items()):
                self._put(label, children, children.sums.take(), MOVE)

    def unflushed(self, view: Unflushed) -> None:
        """Add to a scrape's ``view`` what :meth:`flush` would move now (the caller holds LOCK)."""
        for label, children in list(self._children.items()):
            self._put(label, children, children.sums.pending(), view)

    def _put(self, label: str, children: _Children, delta: list[float], sink: Sink) -> None:
        m, route = self._metrics, (label,)
        sink.count(m.route_requests, route, children.requests, delta[_REQUESTS])
        sink.count(m.route_checkouts, route, children.checkouts, delta[_CHECKOUTS])
        sink.count(m.route_wait, route, children.wait, delta[_WAIT])
        sink.count(m.route_hold, route, children.hold, delta[_HOLD])
        sink.count(m.route_idle, route, children.idle, delta[_IDLE])

    def count_request(self, route: str) -> None:
        """A request that never used the pool finished: one more request on its route."""
        children = self.children(route)
        if self._batched:
            children.sums.slot()[_REQUESTS] += 1
        else:
            children.requests.inc()

    def held(self, scope: RequestScope, seconds: float) -> None:
        """A connection checked out during ``scope``'s request was returned."""
        if scope.finished:  # returned after the response: count it straight away
            self.children(scope.route).hold.inc(seconds)
        else:
            scope.hold_seconds += seconds

    def idle(self, scope: RequestScope | None, seconds: float) -> None:
        """A connection held ``seconds`` with no statement running came back: outside requests
        and after the response counted at once, else with the request's totals."""
        if scope is None:
            self._none.idle.inc(seconds)
        elif scope.finished:
            self.children(scope.route).idle.inc(seconds)
        else:
            scope.idle_seconds += seconds

    @property
    def labels(self) -> list[str]:
        """Every route label counted so far."""
        return list(self._children)

    def finish(self, scope: RequestScope) -> None:
        """Add a finished request's totals to its route's counters."""
        children = self.children(scope.route)
        scope.finished = True
        if self._batched:
            sums = children.sums.slot()
            sums[_REQUESTS] += 1
            sums[_CHECKOUTS] += scope.checkouts
            sums[_WAIT] += scope.wait_seconds
            sums[_HOLD] += scope.hold_seconds
            sums[_IDLE] += scope.idle_seconds
            return
        children.requests.inc()
        if scope.checkouts:
            children.checkouts.inc(scope.checkouts)
        if scope.wait_seconds:
            children.wait.inc(scope.wait_seconds)
        if scope.hold_seconds:
            children.hold.inc(scope.hold_seconds)
        if scope.idle_seconds:
            children.idle.inc(scope.idle_seconds)
