"""Route counters: bounded labels, and the work done outside requests under route="none"."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from observer.attribution._route_metrics import RouteMetrics
from observer.attribution._scope import RequestScope
from observer.metrics._families import Metrics
from tests.helpers import sample


def test_route_labels_are_capped_and_the_rest_is_other(registry: CollectorRegistry) -> None:
    """After max_routes distinct routes, new ones are counted as 'other'; known ones keep theirs."""
    routes = RouteMetrics(Metrics(registry, multiprocess=False), max_routes=3)
    for n in range(10):
        routes.finish(RequestScope(route=f"/r{n}", checkouts=1))
    routes.finish(RequestScope(route="/r1", checkouts=1))
    routes.flush()  # finished requests are summed per thread until a flush moves them
    counts = {
        f"/r{n}": sample(registry, "sqlalchemy_route_checkouts_total", route=f"/r{n}")
        for n in range(10)
    }
    assert counts == {"/r0": 1.0, "/r1": 2.0, "/r2": 1.0, **{f"/r{n}": None for n in range(3, 10)}}
    assert sample(registry, "sqlalchemy_route_checkouts_total", route="other") == 7.0


def test_work_outside_requests_counts_under_none(registry: CollectorRegistry) -> None:
    """What the pool trackers summed outside requests reaches route="none"; zeros add nothing."""
    routes = RouteMetrics(Metrics(registry, multiprocess=False), max_routes=3)
    routes.count_outside(3, 0.25, 1.5)
    routes.count_outside(0, 0.0, 0.0)
    assert sample(registry, "sqlalchemy_route_checkouts_total", route="none") == 3.0
    assert sample(registry, "sqlalchemy_route_checkout_wait_seconds_total", route="none") == 0.25
    assert sample(registry, "sqlalchemy_route_connection_hold_seconds_total", route="none") == 1.5


def test_finished_requests_are_counted_once_on_flush_or_at_once_in_multiprocess_mode(
    registry: CollectorRegistry,
) -> None:
    """A single process sums finished requests per thread and counts them on flush (a scrape
    of the Observer's registry adds what no flush has moved yet), exactly once; multiprocess
    mode counts them at once, since another process reads the values at any time."""
    batched = RouteMetrics(Metrics(registry, multiprocess=False), max_routes=3)
    batched.finish(RequestScope(route="/a", checkouts=2, wait_seconds=0.5, hold_seconds=1.0))
    assert sample(registry, "sqlalchemy_route_requests_total", route="/a") == 0.0
    batched.flush()
    batched.flush()
    assert sample(registry, "sqlalchemy_route_requests_total", route="/a") == 1.0
    assert sample(registry, "sqlalchemy_route_checkouts_total", route="/a") == 2.0
    assert sample(registry, "sqlalchemy_route_checkout_wait_seconds_total", route="/a") == 0.5
    assert sample(registry, "sqlalchemy_route_connection_hold_seconds_total", route="/a") == 1.0
    direct_registry = CollectorRegistry()
    direct = RouteMetrics(Metrics(direct_registry, multiprocess=False), max_routes=3)
    direct._batched = False  # what multiprocess mode does
    direct.finish(RequestScope(route="/a", checkouts=2))
    assert sample(direct_registry, "sqlalchemy_route_requests_total", route="/a") == 1.0
    assert sample(direct_registry, "sqlalchemy_route_checkouts_total", route="/a") == 2.0
