"""Route counters: bounded labels, and exact sums for work done outside requests."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from observer.context import RequestScope
from observer.metrics import Metrics
from observer.routes import RouteMetrics, ThreadTotals
from tests.conftest import sample


def test_thread_totals_lose_nothing_with_concurrent_writers_and_takers() -> None:
    """Four threads add while another takes repeatedly: the sum of what was taken is exact."""
    totals = ThreadTotals(2)
    taken = [0.0, 0.0]
    done = threading.Event()

    def write() -> None:
        for _ in range(20000):
            sums = totals.slot()
            sums[0] += 1
            sums[1] += 0.5

    def take() -> None:
        while not done.is_set():
            delta = totals.take()
            taken[0] += delta[0]
            taken[1] += delta[1]

    taker = threading.Thread(target=take)
    taker.start()
    writers = [threading.Thread(target=write) for _ in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    taker.join()
    delta = totals.take()
    assert taken[0] + delta[0] == 80000
    assert taken[1] + delta[1] == 40000


def test_route_labels_are_capped_and_the_rest_is_other(registry: CollectorRegistry) -> None:
    """After max_routes distinct routes, new ones are counted as 'other'; known ones keep theirs."""
    routes = RouteMetrics(Metrics(registry, multiprocess=False), max_routes=3)
    for n in range(10):
        routes.finish(RequestScope(route=f"/r{n}", checkouts=1))
    routes.finish(RequestScope(route="/r1", checkouts=1))
    counts = {
        f"/r{n}": sample(registry, "sqlalchemy_route_checkouts_total", route=f"/r{n}")
        for n in range(10)
    }
    assert counts == {"/r0": 1.0, "/r1": 2.0, "/r2": 1.0, **{f"/r{n}": None for n in range(3, 10)}}
    assert sample(registry, "sqlalchemy_route_checkouts_total", route="other") == 7.0


def test_work_outside_requests_counts_under_none_on_flush(registry: CollectorRegistry) -> None:
    """Outside-request sums reach route="none" when flushed, exactly once."""
    routes = RouteMetrics(Metrics(registry, multiprocess=False), max_routes=3)
    sums = routes.outside.slot()
    sums[0] += 3
    sums[1] += 0.25
    sums[2] += 1.5
    routes.flush()
    routes.flush()
    assert sample(registry, "sqlalchemy_route_checkouts_total", route="none") == 3.0
    assert sample(registry, "sqlalchemy_route_checkout_wait_seconds_total", route="none") == 0.25
    assert sample(registry, "sqlalchemy_route_connection_hold_seconds_total", route="none") == 1.5
