"""The one place that reads prometheus-client's private names: a histogram child's internals.

The hot path sums a histogram's bucket counts per thread (observer/metrics/_batching.py) and a
flush adds them to the child's own bucket values, which prometheus-client keeps in private
attributes (it has no public "add n observations to bucket i"). Each accessor returns ``None``
when a release no longer has the internal in the expected shape; ``can_batch`` is then false
and the trackers call ``observe()`` on every event instead (slower, never wrong).

Verified on prometheus-client 0.20.0 (the declared floor) and 0.26.0 (the installed release):
the same three attributes in both, set by ``Histogram._prepare_buckets``/``_metric_init``, and
the same in multiprocess mode (where the values are file-backed; the observer does not batch
there). tests/metrics/test_prometheus_seam.py pins each accessor against the installed release.
"""

from __future__ import annotations

from typing import Any, Protocol


class Value(Protocol):
    """One of prometheus-client's value cells (``values.ValueClass``): a float with a lock."""

    def inc(self, amount: float) -> None: ...

    def get(self) -> float: ...


def _value(candidate: object) -> Value | None:
    if callable(getattr(candidate, "inc", None)) and callable(getattr(candidate, "get", None)):
        return candidate  # type: ignore[return-value]
    return None


def histogram_buckets(child: object) -> list[Value] | None:
    """``Histogram._buckets``: one value per upper bound (+Inf last), each counting the
    observations that fell in that bucket only (the exposition makes them cumulative)."""
    buckets: Any = getattr(child, "_buckets", None)
    if not isinstance(buckets, list) or not all(_value(bucket) for bucket in buckets):
        return None
    return buckets


def histogram_sum(child: object) -> Value | None:
    """``Histogram._sum``: the sum of the observed values."""
    return _value(getattr(child, "_sum", None))


def histogram_upper_bounds(child: object) -> list[float] | None:
    """``Histogram._upper_bounds``: the bucket bounds as floats, ``inf`` last."""
    bounds: Any = getattr(child, "_upper_bounds", None)
    if not isinstance(bounds, list) or not all(isinstance(b, float) for b in bounds):
        return None
    return bounds
