"""Scrape-time collectors (single process): values computed when read, and reading changes nothing.

Gauges kept by inc/dec drift (a connection the garbage collector reclaims fires no checkin),
so the pool gauges are read from the pool at scrape time: exact, and free on the hot path. The
counters the hot path sums per thread are read as prometheus-client's values plus the sums not
moved yet (:class:`BatchedCollector`). A collector never raises into a scrape: a source that
fails leaves its part out and is reported to ``failed`` (the observer counts it as
``observer_hook_errors_total{hook="collect"}``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from observer.metrics._batching import LOCK, Unflushed
from observer.metrics._families import (
    LIVE_POOLS,
    LIVE_POOLS_HELP,
    POOL_GAUGES,
    POOL_OLDEST,
    POOL_OLDEST_HELP,
    ROUTE_HELD,
    ROUTE_HELD_HELP,
    ROUTE_OLDEST,
    ROUTE_OLDEST_HELP,
    SESSIONS_OPEN,
    SESSIONS_OPEN_HELP,
    Metrics,
)

if TYPE_CHECKING:  # the pool layer is above this one: its state type is only named here
    from observer.pool._state import PoolState

T = TypeVar("T")
Failed = Callable[[Exception], None]
"""Reports an exception a collector caught (lock-free: it runs inside a scrape)."""


def _read(read: Callable[[], T], default: T, failed: Failed) -> T:
    """``read()``, or ``default`` once ``failed`` got the exception it raised."""
    try:
        return read()
    except Exception as exc:
        failed(exc)
        return default


_FIELDS = {
    "sqlalchemy_pool_size": "size",
    "sqlalchemy_pool_max_connections": "max_connections",
    "sqlalchemy_pool_checked_out_connections": "checked_out",
    "sqlalchemy_pool_checked_in_connections": "checked_in",
    "sqlalchemy_pool_overflow_connections": "overflow",
    "sqlalchemy_pool_waiting_requests": "waiting",
}


def gauge_values(state: PoolState) -> dict[str, int]:
    """Metric name -> value of one pool's state."""
    return {name: getattr(state, field) for name, field in _FIELDS.items()}


class BatchedCollector(Collector):
    """The families the hot path sums per thread, read as what prometheus-client holds plus what
    no flush has moved yet (:class:`~observer.metrics._batching.Unflushed`).

    Reading moves nothing and runs nothing, so a scrape filtered by name (``?name[]=``, which
    calls only the collectors of the names asked for) shows what a full one shows, whatever the
    order the collectors were registered in. Work deferred out of hooks (closes, connections
    and sessions the garbage collector reclaimed, hook errors) is counted when it runs: on the
    sweeper's next tick (``sweep_interval_seconds``), ``Observer.flush()`` or ``snapshot()``.
    """

    def __init__(
        self,
        families: Sequence[MetricWrapperBase],
        unflushed: Callable[[Unflushed], None],
        failed: Failed,
    ) -> None:
        self._families = tuple(families)
        self._unflushed = unflushed
        self._failed = failed

    def describe(self) -> Iterable[Metric]:
        for family in self._families:
            yield from family.describe()

    def collect(self) -> Iterable[Metric]:
        view = Unflushed()
        with LOCK:  # no flush moves sums between reading prometheus-client and the threads
            collected = [(family, list(family.collect())) for family in self._families]
            # Should a source fail, the sums read so far are added: the counters then show
            # prometheus-client's values plus part of the unflushed sums (low, never invented).
            _read(lambda: self._unflushed(view), None, self._failed)
        for family, metrics in collected:
            for metric in metrics:
                metric.samples = view.add_to(family, metric.samples)
                yield metric


def batched_families(metrics: Metrics) -> list[MetricWrapperBase]:
    """The families the hot path sums per thread (pool, session and route counters)."""
    return [
        metrics.checkouts,
        metrics.checkout_duration,
        metrics.hold,
        metrics.sessions_opened,
        metrics.sessions_closed,
        metrics.session_duration,
        metrics.route_checkouts,
        metrics.route_wait,
        metrics.route_hold,
        metrics.route_requests,
        metrics.route_idle,
        metrics.idle_gap,
    ]


class StateCollector(Collector):
    """The pool gauges, live pools and open sessions, read at scrape time."""

    def __init__(
        self,
        pools: Callable[[], Sequence[tuple[str, PoolState]]],
        live_pools: Callable[[], int],
        sessions_open: Callable[[], int],
        failed: Failed,
    ) -> None:
        self._pools = pools
        self._live_pools = live_pools
        self._sessions_open = sessions_open
        self._failed = failed

    def describe(self) -> Iterable[GaugeMetricFamily]:
        for name, help_text in POOL_GAUGES.items():
            yield GaugeMetricFamily(name, help_text, labels=["pool"])
        yield GaugeMetricFamily(LIVE_POOLS, LIVE_POOLS_HELP)
        yield GaugeMetricFamily(SESSIONS_OPEN, SESSIONS_OPEN_HELP)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families = {
            name: GaugeMetricFamily(name, help_text, labels=["pool"])
            for name, help_text in POOL_GAUGES.items()
        }
        pools: Sequence[tuple[str, PoolState]] = _read(self._pools, (), self._failed)
        for pool, state in pools:
            for name, value in gauge_values(state).items():
                families[name].add_metric([pool], value)
        yield from families.values()
        # a value that cannot be read leaves its family without a sample (absent, not 0)
        live_pools = _read(self._live_pools, None, self._failed)
        yield GaugeMetricFamily(LIVE_POOLS, LIVE_POOLS_HELP, value=live_pools)
        sessions_open = _read(self._sessions_open, None, self._failed)
        yield GaugeMetricFamily(SESSIONS_OPEN, SESSIONS_OPEN_HELP, value=sessions_open)


class RouteHeldCollector(Collector):
    """``sqlalchemy_route_connections_held{route}``: connections held now, by the route of the
    request that checked them out, read from the checkout stamps at scrape time."""

    def __init__(self, held: Callable[[], Mapping[str, int]], failed: Failed) -> None:
        self._held = held
        self._failed = failed

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(ROUTE_HELD, ROUTE_HELD_HELP, labels=["route"])

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(ROUTE_HELD, ROUTE_HELD_HELP, labels=["route"])
        held: Mapping[str, int] = _read(self._held, {}, self._failed)
        for route, count in sorted(held.items()):
            family.add_metric([route], count)
        yield family


class HeldNow(NamedTuple):
    """Connections checked out now, from the trackers' checkout stamps: the held-now signals."""

    pools_oldest: Sequence[tuple[str, float]]  # (pool, age of its oldest checkout, 0 if none)
    routes_held: Mapping[str, int]  # route -> connections it holds now
    routes_oldest: Mapping[str, float]  # route -> age of its oldest checkout now (0 if none)


class HeldNowCollector(Collector):
    """``sqlalchemy_pool_oldest_checkout_seconds{pool}`` and
    ``sqlalchemy_route_oldest_checkout_seconds{route}``: how long the oldest connection checked
    out now has been held, computed at scrape time (nothing on the hot path). Unlike the hold
    histogram, which only sees connections that came back, it grows while a connection is
    never returned."""

    def __init__(self, held_now: Callable[[], HeldNow], failed: Failed) -> None:
        self._held_now = held_now
        self._failed = failed

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(POOL_OLDEST, POOL_OLDEST_HELP, labels=["pool"])
        yield GaugeMetricFamily(ROUTE_OLDEST, ROUTE_OLDEST_HELP, labels=["route"])

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now: HeldNow = _read(self._held_now, HeldNow((), {}, {}), self._failed)
        pools = GaugeMetricFamily(POOL_OLDEST, POOL_OLDEST_HELP, labels=["pool"])
        for pool, age in now.pools_oldest:
            pools.add_metric([pool], age)
        routes = GaugeMetricFamily(ROUTE_OLDEST, ROUTE_OLDEST_HELP, labels=["route"])
        for route, age in sorted(now.routes_oldest.items()):
            routes.add_metric([route], age)
        yield pools
        yield routes
