"""Counts kept per thread on the hot path, moved into prometheus-client in batches.

A prometheus-client ``Counter.inc`` costs about 0.25 us and a ``Histogram.observe`` 0.5 us, each
taking a lock; a checkout cycle made three of them. Adding to a plain list that only the current
thread writes costs a tenth of that and needs no lock. The owner of the sums moves what the
threads added into prometheus-client on flush (every sweeper tick, ``Observer.flush()``); a
scrape moves nothing: it shows what prometheus-client holds plus what no flush has moved yet
(:class:`Unflushed`, read by ``observer/metrics/_collectors.py``). Both hold :data:`LOCK`, so a
scrape never sees a count twice or misses one that a flush is moving.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Sequence
from threading import get_ident
from typing import Any, Protocol

from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from observer._compat import prometheus as compat

INF = float("inf")
_le: Callable[[float], str] = floatToGoString  # how prometheus-client writes a bucket's bound

LOCK = threading.Lock()
"""Held by a flush while it moves sums into prometheus-client, and by a scrape while it reads
prometheus-client and the sums not moved yet. One per process: both are rare (a sweeper tick, a
scrape) and the hot path never takes it. Work deferred out of hooks is never run under it."""

Labels = tuple[str, ...]


class ThreadSums:
    """Running sums kept per thread: each list has one writer (its thread), so the hot path adds
    to it without a lock and nothing is lost; :meth:`take` returns what was added since the last
    call, :meth:`pending` the same without taking it."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._by_thread: dict[int, list[float]] = {}
        self.by_thread = self._by_thread
        """Each thread's sums by ``get_ident()``: the hot path's inline lookup, falling back
        to :meth:`slot` the first time (``by_thread.get(get_ident()) or slot()``)."""
        self._taken: dict[int, list[float]] = {}
        self._lock = threading.Lock()

    def slot(self) -> list[float]:
        """This thread's sums (add to them in place)."""
        sums = self._by_thread.get(get_ident())
        if sums is None:
            sums = self._by_thread[get_ident()] = [0.0] * self._size
        return sums

    def take(self) -> list[float]:
        """What every thread added since the last call (then counted as taken)."""
        return self._delta(take=True)

    def pending(self) -> list[float]:
        """What :meth:`take` would return now; changes nothing."""
        return self._delta(take=False)

    def _delta(self, *, take: bool) -> list[float]:
        with self._lock:
            size = self._size
            delta = [0.0] * size
            for ident, sums in list(self._by_thread.items()):
                taken = self._taken.get(ident)
                if taken is None:
                    taken = [0.0] * size
                    if take:
                        self._taken[ident] = taken
                for i in range(size):
                    value = sums[i]  # read once: the owner may be adding to it right now
                    delta[i] += value - taken[i]
                    if take:
                        taken[i] = value
            return delta


class HistogramSlots:
    """Where one histogram's bucket counts and sum live in a :class:`ThreadSums` list:
    ``len(bounds) + 1`` counts (the last one is +Inf), then the sum."""

    def __init__(self, start: int, bounds: Sequence[float]) -> None:
        self.start = start
        self.bounds = (*bounds, INF)
        self.sum = start + len(self.bounds)
        self.end = self.sum + 1
        # the bucket of each ``le`` label a scrape shows
        self.bucket_of = {_le(bound): i for i, bound in enumerate(self.bounds)}

    def add(self, sums: list[float], value: float) -> None:
        """Count ``value`` into this thread's ``sums`` (what ``Histogram.observe`` would do)."""
        sums[self.start + bisect_left(self.bounds, value)] += 1
        sums[self.sum] += value

    def flush(self, child: Any, delta: Sequence[float]) -> None:
        """Add the counts of ``delta`` to a prometheus-client histogram child (one that
        :func:`can_batch` accepted)."""
        counts = delta[self.start : self.sum]
        if not any(counts):
            return
        buckets = compat.histogram_buckets(child)
        total = compat.histogram_sum(child)
        assert buckets is not None  # can_batch() checked both
        assert total is not None
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
        total.inc(delta[self.sum])


def can_batch(child: Any, bounds: Sequence[float]) -> bool:
    """Whether ``child`` is a prometheus-client histogram whose buckets :class:`HistogramSlots`
    can add to, through the accessors of ``observer/_compat/prometheus.py``; if a release
    changes the internals they read, the caller falls back to ``observe()`` on every event."""
    buckets = compat.histogram_buckets(child)
    upper = compat.histogram_upper_bounds(child)
    return (
        buckets is not None
        and len(buckets) == len(bounds) + 1
        and upper == [*bounds, INF]
        and compat.histogram_sum(child) is not None
    )


class Sink(Protocol):
    """Where the owner of some sums puts them: into prometheus-client (:data:`MOVE`, a flush) or
    into a scrape's view of what has not moved yet (:class:`Unflushed`). One method of the owner
    feeds both, so a scrape shows exactly what the next flush will add."""

    def count(self, family: Any, labels: Labels, child: Any, amount: float) -> None:
        """``amount`` more on the counter ``child``, the series ``labels`` of ``family``."""

    def histogram(
        self, family: Any, labels: Labels, child: Any, slots: HistogramSlots, delta: list[float]
    ) -> None:
        """The observations counted in ``delta`` at ``slots``, on the histogram ``child``."""


class _Move:
    """Adds to the prometheus-client children (what a flush does)."""

    def count(self, family: Any, labels: Labels, child: Any, amount: float) -> None:
        if amount:
            child.inc(amount)

    def histogram(
        self, family: Any, labels: Labels, child: Any, slots: HistogramSlots, delta: list[float]
    ) -> None:
        slots.flush(child, delta)


MOVE: Sink = _Move()


class Unflushed:
    """What the threads added and no flush has moved yet, by family and series, added to the
    samples prometheus-client collects (in the order a flush would add it, so a scrape shows
    the very floats the flush will leave: a counter never seems to go back)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[int, Labels], list[float]] = {}
        self._histograms: dict[tuple[int, Labels], list[tuple[HistogramSlots, list[float]]]] = {}
        self._families: set[int] = set()  # id() of the families with something to add

    def count(self, family: Any, labels: Labels, child: Any, amount: float) -> None:
        if amount:
            self._counts.setdefault((id(family), labels), []).append(amount)
            self._families.add(id(family))

    def histogram(
        self, family: Any, labels: Labels, child: Any, slots: HistogramSlots, delta: list[float]
    ) -> None:
        if any(delta[slots.start : slots.sum]):
            self._histograms.setdefault((id(family), labels), []).append((slots, delta))
            self._families.add(id(family))

    def add_to(self, family: Any, samples: list[Sample]) -> list[Sample]:
        """``samples`` (what ``family.collect()`` gave) with what has not moved yet added."""
        key = id(family)
        if key not in self._families:
            return samples
        return [self._added(key, sample) for sample in samples]

    def _added(self, key: int, sample: Sample) -> Sample:
        labels = tuple(value for name, value in sample.labels.items() if name != "le")
        name = sample.name
        value = sample.value
        amounts = self._counts.get((key, labels))
        if amounts is not None and name.endswith("_total"):
            for amount in amounts:
                value += amount
        histograms = self._histograms.get((key, labels))
        if histograms is not None and name.endswith(("_bucket", "_count", "_sum")):
            for slots, delta in histograms:
                if name.endswith("_sum"):
                    value += delta[slots.sum]
                    continue
                last = slots.sum - 1  # the +Inf bucket: the count
                if name.endswith("_bucket"):
                    last = slots.start + slots.bucket_of.get(sample.labels["le"], -1)
                value += sum(delta[slots.start : last + 1])
        if value == sample.value:
            return sample
        return Sample(name, sample.labels, value, *sample[3:])
