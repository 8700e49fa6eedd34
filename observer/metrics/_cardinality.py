"""The cardinality budget: how many series one process (or one multiprocess replica) exports,
as a function of its pools, routes and leak origins, read from the metric contract.

Every label has a bounded set of values: ``pool`` one per watched engine, ``route`` the app's
templates up to ``max_routes`` plus ``none``, ``unmatched`` and ``other``, ``origin`` up to
``max_origins`` code lines plus ``other`` and ``unknown``, and the fixed sets of the contract
(close reasons, leak reasons, ...). docs/production.md renders the table; a test checks it on a
real scrape.
"""

from __future__ import annotations

from dataclasses import dataclass

from observer.metrics._contract import CLOSE_REASONS, LEAK_REASONS, LEAK_RESOLUTIONS, METRICS
from observer.metrics._spec import MetricSpec

# Values a label takes beyond the app's own: requests outside a route, unmatched paths, and
# the overflow beyond max_routes; leaks without an app frame, and beyond max_origins.
ROUTE_EXTRAS = ("none", "unmatched", "other")
ORIGIN_EXTRAS = ("other", "unknown")
# One observer_hook_errors_total series per guarded hook, bound when the hook is installed
# (20 in a process serving requests through the middleware today).
HOOKS = 24


@dataclass(frozen=True)
class Budget:
    """Series of one exposition: fixed, and per pool, per route and per origin."""

    fixed: int
    per_pool: int
    per_route: int
    per_origin: int

    def series(self, pools: int, routes: int, origins: int = 0) -> int:
        """Series for ``pools`` watched engines, ``routes`` route templates served and
        ``origins`` distinct leaking code lines (``max_origins`` at most)."""
        return (
            self.fixed
            + pools * self.per_pool
            + (routes + len(ROUTE_EXTRAS)) * self.per_route
            + (origins + len(ORIGIN_EXTRAS)) * self.per_origin
        )


def _samples(spec: MetricSpec, *, created: bool) -> int:
    """Series of one label combination: a histogram's buckets (+Inf too), _sum and _count;
    a counter's _total; ``_created`` beside counters and histograms unless multiprocess."""
    extra = 1 if created and spec.type != "gauge" else 0
    if spec.type == "histogram":
        return len(spec.buckets or ()) + 1 + 2 + extra
    return 1 + extra


def _fixed_labels(spec: MetricSpec) -> int:
    """Combinations of the labels that are neither pool, route nor origin."""
    n = 1
    for label in spec.labels:
        if label == "reason":
            n *= len(CLOSE_REASONS if "pool" in spec.labels else LEAK_REASONS)
        elif label == "how":
            n *= len(LEAK_RESOLUTIONS)
        elif label == "hook":
            n *= HOOKS
    return n


def budget(*, workers: int | None = None, leaks: bool = True) -> Budget:
    """The budget of one process's ``/metrics`` (``workers=None``: prometheus-client in one
    process, ``_created`` series included), or of one replica of ``workers`` processes in
    multiprocess mode (counters and histograms summed over the workers, pool gauges one series
    per worker: ``liveall``). ``leaks=False`` leaves out the series that appear only once
    sessions leak (per route and reason, per origin). Metrics the contract marks planned are
    not exported yet, so not counted."""
    parts = {"fixed": 0, "pool": 0, "route": 0, "origin": 0}
    for spec in METRICS:
        if spec.exporter != "library" or spec.planned:
            continue
        if not leaks and spec.name.startswith("sqlalchemy_orm_session_leak"):
            continue
        n = _samples(spec, created=workers is None) * _fixed_labels(spec)
        if workers is not None and spec.multiprocess_mode == "liveall":
            n *= workers  # label pid: one series per live worker
        kind = next((k for k in ("pool", "route", "origin") if k in spec.labels), "fixed")
        parts[kind] += n
    return Budget(parts["fixed"], parts["pool"], parts["route"], parts["origin"])
