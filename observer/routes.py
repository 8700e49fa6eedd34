"""Per-route counters (who hogs the pool, who waits for it), with a bounded label set."""

from __future__ import annotations

import threading
from threading import get_ident
from typing import NamedTuple

from prometheus_client import Counter

from observer.context import NO_ROUTE, RequestScope
from observer.metrics import Metrics

OTHER_ROUTE = "other"
"""Route label once ``max_routes`` distinct routes have been seen."""


class _Children(NamedTuple):
    checkouts: Counter
    wait: Counter
    hold: Counter
    requests: Counter


class ThreadTotals:
    """Running sums kept per thread: each list has one writer (its thread), so the hot path
    adds to it without a lock and nothing is lost; :meth:`take` returns what was added since
    the last call, for the counters."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._by_thread: dict[int, list[float]] = {}
        self._taken: dict[int, list[float]] = {}
        self._lock = threading.Lock()

    def slot(self) -> list[float]:
        """This thread's sums (add to them in place)."""
        sums = self._by_thread.get(get_ident())
        if sums is None:
            sums = self._by_thread[get_ident()] = [0.0] * self._size
        return sums

    def take(self) -> list[float]:
        with self._lock:
            delta = [0.0] * self._size
            for ident, sums in list(self._by_thread.items()):
                taken = self._taken.setdefault(ident, [0.0] * self._size)
                for i in range(self._size):
                    value = sums[i]  # read once: the owner may be adding to it right now
                    delta[i] += value - taken[i]
                    taken[i] = value
            return delta


CHECKOUTS, WAIT, HOLD = 0, 1, 2


class RouteMetrics:
    """Bound route children, created at most ``max_routes`` times (plus ``none`` and ``other``)."""

    def __init__(self, metrics: Metrics, *, max_routes: int) -> None:
        self._metrics = metrics
        self._max_routes = max_routes
        self._lock = threading.Lock()
        self._children: dict[str, _Children] = {}
        self._none = self.children(NO_ROUTE)
        # Work outside requests (scripts, background tasks, benchmarks) is summed per thread
        # and counted under route="none" on flush (before every scrape, and by the sweeper).
        self.outside = ThreadTotals(3)

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
                )
                self._children[label] = found
            return found

    def flush(self) -> None:
        """Count the work done outside requests since the last flush under ``route="none"``."""
        checkouts, wait, hold = self.outside.take()
        children = self._none
        if checkouts:
            children.checkouts.inc(checkouts)
        if wait:
            children.wait.inc(wait)
        if hold:
            children.hold.inc(hold)

    def held(self, scope: RequestScope, seconds: float) -> None:
        """A connection checked out during ``scope``'s request was returned."""
        if scope.finished:  # returned after the response: count it straight away
            self.children(scope.route).hold.inc(seconds)
        else:
            scope.hold_seconds += seconds

    @property
    def labels(self) -> list[str]:
        """Every route label counted so far."""
        return list(self._children)

    def finish(self, scope: RequestScope) -> None:
        """Add a finished request's totals to its route's counters."""
        children = self.children(scope.route)
        scope.finished = True
        children.requests.inc()
        if scope.checkouts:
            children.checkouts.inc(scope.checkouts)
        if scope.wait_seconds:
            children.wait.inc(scope.wait_seconds)
        if scope.hold_seconds:
            children.hold.inc(scope.hold_seconds)
