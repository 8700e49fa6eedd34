"""Per-thread sums: exact under concurrent writers, and batched histograms equal observe()."""

from __future__ import annotations

import random
import threading

from prometheus_client import CollectorRegistry, Histogram

from observer.metrics._batching import HistogramSlots, ThreadSums, can_batch
from observer.metrics._families import HOLD_BUCKETS, WAIT_BUCKETS


def test_sums_lose_nothing_with_concurrent_writers_and_takers() -> None:
    """Four threads add while another takes repeatedly: the sum of what was taken is exact."""
    totals = ThreadSums(2)
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


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_a_batched_histogram_equals_one_fed_by_observe() -> None:
    """The same values, on the bucket bounds, between them, 0 and beyond the last bound, give
    the same buckets, count and sum either way, also over several flushes."""
    for bounds in (WAIT_BUCKETS, HOLD_BUCKETS):
        values = [0.0, *bounds, *(b * 1.0001 for b in bounds), *(b * 0.9999 for b in bounds)]
        values += [1e9] + [random.Random(7).expovariate(20) for _ in range(500)]
        direct_registry, batched_registry = CollectorRegistry(), CollectorRegistry()
        direct = Histogram("h", "h", buckets=bounds, registry=direct_registry)
        batched = Histogram("h", "h", buckets=bounds, registry=batched_registry)
        assert can_batch(batched, bounds)
        slots = HistogramSlots(1, bounds)
        sums = ThreadSums(slots.end)
        for n, value in enumerate(values):
            direct.observe(value)
            slots.add(sums.slot(), value)
            if n % 97 == 0:
                slots.flush(batched, sums.take())
        slots.flush(batched, sums.take())
        slots.flush(batched, sums.take())  # nothing new: adds nothing
        expected, got = _samples(direct_registry), _samples(batched_registry)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if key[0] == "h_sum":  # the same floats added in another order
                assert abs(got[key] - value) < 1e-6
            else:
                assert got[key] == value, key


def test_a_histogram_with_other_bounds_is_not_batched() -> None:
    """can_batch checks the bounds too: slots laid out for other buckets would miscount."""
    histogram = Histogram("h", "h", buckets=(1.0, 2.0), registry=CollectorRegistry())
    assert can_batch(histogram, (1.0, 2.0))
    assert not can_batch(histogram, (1.0, 3.0))
    assert not can_batch(object(), (1.0, 2.0))
