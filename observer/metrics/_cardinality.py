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

# Values the route label takes beyond the app's templates: requests outside a route, unmatched
# paths, and the overflow beyond max_routes.
ROUTE_EXTRAS = ("none", "unmatched", "other")
# One observer_hook_errors_total series per guarded hook, bound when the hook is installed
# (20 in a process serving requests through the middleware today).
HOOKS = 24


@dataclass(frozen=True)
class Budget:
    """Series of one exposition: fixed, per pool, per route, and what leaks add."""

    fixed: int  # with the leak series created up front (route none, origin unknown)
    per_pool: int
    per_route: int
    per_leaking_route: int  # a route value whose sessions leaked: its leak series
    per_origin: int  # a leaking code line (or other) of the leak origins metric

    def series(self, pools: int, routes: int, origins: int = 0, leaking_routes: int = 0) -> int:
        """At most this many series for ``pools`` watched engines, ``routes`` route templates
        served (plus ``none``, ``unmatched`` and ``other``), ``leaking_routes`` of those route
        values with leaks, and ``origins`` leaking code lines (``max_origins`` at most; plus
        ``other``)."""
        return (
            self.fixed
            + pools * self.per_pool
            + (routes + len(ROUTE_EXTRAS)) * self.per_route
            + leaking_routes * self.per_leaking_route
            + (origins + 1 if origins else 0) * self.per_origin
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


def budget(*, workers: int | None = None) -> Budget:
    """The budget of one process's ``/metrics`` (``workers=None``: prometheus-client in one
    process, ``_created`` series included), or of one replica of ``workers`` processes in
    multiprocess mode (counters and histograms summed over the workers, pool gauges one series
    per worker: ``liveall``). Metrics the contract marks planned are not exported yet, so not
    counted."""
    parts = dict.fromkeys(("fixed", "pool", "route", "leak", "origin"), 0)
    for spec in METRICS:
        if spec.exporter != "library" or spec.planned:
            continue
        n = _samples(spec, created=workers is None) * _fixed_labels(spec)
        if workers is not None and spec.multiprocess_mode == "liveall":
            n *= workers  # label pid: one series per live worker
        kind = next((k for k in ("pool", "route", "origin") if k in spec.labels), "fixed")
        if spec.name.startswith("sqlalchemy_orm_session_leak"):
            parts["fixed"] += n  # created up front for route none and origin unknown
            kind = "leak" if kind == "route" else kind
        parts[kind] += n
    return Budget(parts["fixed"], parts["pool"], parts["route"], parts["leak"], parts["origin"])
