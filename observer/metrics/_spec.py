"""What one metric of the contract is: its type, labels, buckets and help (the tables use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["counter", "gauge", "histogram"]
# Who exports a metric: the library in the app, ``observer sidecar``, or ``observer.alembic``.
Exporter = Literal["library", "sidecar", "alembic"]
# How prometheus-client aggregates a gauge over the workers of PROMETHEUS_MULTIPROC_DIR.
MultiprocessMode = Literal["liveall", "livesum", "livemax"]

CLOSE_REASONS = ("closed", "invalidated", "soft_invalidated", "detached", "garbage_collected")
LEAK_REASONS = ("request_end", "garbage_collected", "too_old")
# What became of a session after it was counted as a leak (request_end or too_old).
LEAK_RESOLUTIONS = ("closed", "garbage_collected")

# Waits: sub-millisecond when a connection is idle, up to pool_timeout (30 s by default).
WAIT_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# Holds and session lifetimes: a fast query to a transaction left open for minutes.
HOLD_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
CONNECT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A migration takes from a fraction of a second (ADD COLUMN) to an hour (a backfill).
MIGRATION_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric family as a scrape shows it (a counter's name ends in ``_total``)."""

    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] | None = None
    exporter: Exporter = "library"
    planned: bool = False
    """Promised for upcoming work: documented, but not exported yet (dashboards may not use it)."""
    multiprocess_mode: MultiprocessMode | None = None
    """For the library's gauges: how the workers' values combine under PROMETHEUS_MULTIPROC_DIR
    (``liveall``: a series per worker, since a worker's own pool saturates, not the sum)."""
    doc: str = ""
    """More than the help text, for docs/reference.md (Markdown)."""
