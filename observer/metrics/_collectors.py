"""Scrape-time collectors (single process): pool gauges read from the pools themselves.

Gauges kept by inc/dec drift (a connection the garbage collector reclaims fires no checkin),
so the numbers are read from the pool at scrape time: exact, and free on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from observer.metrics._families import (
    LIVE_POOLS,
    LIVE_POOLS_HELP,
    POOL_GAUGES,
    ROUTE_HELD,
    ROUTE_HELD_HELP,
    SESSIONS_OPEN,
    SESSIONS_OPEN_HELP,
)
from observer.pool._tracker import PoolState

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


class FlushCollector(Collector):
    """Registered first, so that work deferred out of hooks is counted before a scrape reads
    the counters."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        self._flush()
        return []


class StateCollector(Collector):
    """The pool gauges, live pools and open sessions, read at scrape time."""

    def __init__(
        self,
        pools: Callable[[], Sequence[tuple[str, PoolState]]],
        live_pools: Callable[[], int],
        sessions_open: Callable[[], int],
    ) -> None:
        self._pools = pools
        self._live_pools = live_pools
        self._sessions_open = sessions_open

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
        for pool, state in self._pools():
            for name, value in gauge_values(state).items():
                families[name].add_metric([pool], value)
        yield from families.values()
        yield GaugeMetricFamily(LIVE_POOLS, LIVE_POOLS_HELP, value=self._live_pools())
        yield GaugeMetricFamily(SESSIONS_OPEN, SESSIONS_OPEN_HELP, value=self._sessions_open())


class RouteHeldCollector(Collector):
    """``sqlalchemy_route_connections_held{route}``: connections held now, by the route of the
    request that checked them out, read from the checkout stamps at scrape time."""

    def __init__(self, held: Callable[[], Mapping[str, int]]) -> None:
        self._held = held

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(ROUTE_HELD, ROUTE_HELD_HELP, labels=["route"])

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(ROUTE_HELD, ROUTE_HELD_HELP, labels=["route"])
        for route, count in sorted(self._held().items()):
            family.add_metric([route], count)
        yield family
