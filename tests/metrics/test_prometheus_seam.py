"""The prometheus-client internals observer/_compat/prometheus.py reads, pinned on this release."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram
from sqlalchemy import create_engine
from sqlalchemy.pool import QueuePool

from observer._compat import prometheus as compat
from observer.metrics._batching import HistogramSlots, can_batch
from observer.metrics._families import HOLD_BUCKETS
from tests.helpers import sample

RELEASE = version("prometheus-client")
BOUNDS = (0.1, 0.5, 2.5)


def pinned(condition: bool, accessor: str, what: str) -> None:
    """Fail naming the accessor (of observer/_compat/prometheus.py unless dotted) and the
    release when an internal changed."""
    where = accessor if "." in accessor else f"observer._compat.prometheus.{accessor}"
    assert condition, (
        f"{where}: prometheus-client {RELEASE} changed {what}; "
        "update the accessor (meanwhile can_batch() is false and every event is observed)"
    )


@pytest.fixture(params=["unlabelled", "labelled"])
def histogram(request: pytest.FixtureRequest) -> tuple[CollectorRegistry, Any, dict[str, str]]:
    """A histogram child as the observer binds them: a family's child, or the family itself."""
    registry = CollectorRegistry()
    if request.param == "unlabelled":
        return registry, Histogram("h", "h", buckets=BOUNDS, registry=registry), {}
    family = Histogram("h", "h", ["pool"], buckets=BOUNDS, registry=registry)
    return registry, family.labels("p"), {"pool": "p"}


def test_histogram_upper_bounds_are_the_bounds_then_inf(histogram: Any) -> None:
    """``_upper_bounds``: the configured bounds as floats, +Inf appended."""
    _, child, _ = histogram
    bounds = compat.histogram_upper_bounds(child)
    pinned(bounds == [0.1, 0.5, 2.5, float("inf")], "histogram_upper_bounds", "_upper_bounds")


def test_histogram_buckets_count_each_bucket_alone_and_feed_the_exposition(
    histogram: Any,
) -> None:
    """``_buckets``: one value per bound, counting only its own bucket (observe() adds 1 to the
    first bound >= the value); what is added to one shows in the cumulative ``_bucket`` samples."""
    registry, child, labels = histogram
    child.observe(0.3)
    child.observe(7.0)
    buckets = compat.histogram_buckets(child)
    pinned(buckets is not None, "histogram_buckets", "_buckets (missing or not value cells)")
    assert buckets is not None
    got = [bucket.get() for bucket in buckets]
    pinned(got == [0.0, 1.0, 0.0, 1.0], "histogram_buckets", f"_buckets (per-bucket {got})")
    buckets[0].inc(2)
    exposed = [sample(registry, "h_bucket", **labels, le=le) for le in ("0.1", "0.5", "+Inf")]
    pinned(exposed == [2.0, 3.0, 4.0], "histogram_buckets", f"_buckets exposed as {exposed}")
    pinned(sample(registry, "h_count", **labels) == 4.0, "histogram_buckets", "the _count")


def test_histogram_sum_holds_the_sum_and_feeds_the_exposition(histogram: Any) -> None:
    """``_sum``: the sum of the observed values; what is added to it shows in ``_sum``."""
    registry, child, labels = histogram
    child.observe(0.25)
    total = compat.histogram_sum(child)
    pinned(total is not None, "histogram_sum", "_sum (missing or not a value cell)")
    assert total is not None
    pinned(total.get() == 0.25, "histogram_sum", f"_sum (holds {total.get()})")
    total.inc(1.0)
    pinned(sample(registry, "h_sum", **labels) == 1.25, "histogram_sum", "_sum's exposition")


def test_bucket_labels_are_formatted_as_the_slots_expect(histogram: Any) -> None:
    """A scrape adds the unflushed counts to the ``_bucket`` sample whose ``le`` label names
    the bound: HistogramSlots formats the bounds as prometheus-client labels them."""
    registry, child, _ = histogram
    child.observe(1.0)
    les = [
        s.labels["le"]
        for metric in registry.collect()
        for s in metric.samples
        if s.name == "h_bucket"
    ]
    assert list(HistogramSlots(0, BOUNDS).bucket_of) == les == ["0.1", "0.5", "2.5", "+Inf"]


def test_can_batch_holds_on_this_release(histogram: Any) -> None:
    """Every accessor answers for a real histogram child, so the hot path batches."""
    _, child, _ = histogram
    pinned(
        can_batch(child, BOUNDS),
        "observer.metrics._batching.can_batch",
        "a histogram child's internals (see the accessors' own tests)",
    )


def test_without_the_internals_nothing_is_batched_and_counts_stay_exact(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The fallback: an object without the internals is not batchable, and if a release drops
    ``_buckets`` the trackers observe every event; the scrape shows the same counts."""
    assert compat.histogram_buckets(object()) is None
    assert compat.histogram_sum(object()) is None
    assert compat.histogram_upper_bounds(object()) is None
    assert not can_batch(object(), HOLD_BUCKETS)
    monkeypatch.setattr(compat, "histogram_buckets", lambda child: None)
    from observer import Observer

    registry = CollectorRegistry()
    obs = Observer(registry=registry, sweep_interval_seconds=3600)
    engine = create_engine(f"sqlite:///{tmp_path}/db.sqlite", poolclass=QueuePool)
    try:
        obs.watch(engine, name="db")
        assert obs._trackers[id(engine)]._batched is False
        assert obs.sessions._batched is False
        for _ in range(3):
            engine.raw_connection().close()
        assert sample(registry, "sqlalchemy_pool_checkouts_total", pool="db") == 3.0
        assert sample(registry, "sqlalchemy_pool_connection_hold_seconds_count", pool="db") == 3.0
    finally:
        obs.close()
        engine.dispose()
