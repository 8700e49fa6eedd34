"""The metric names that dashboards and rules may use: what the library and the sidecar export."""

from __future__ import annotations

from typing import Final

from observer.metrics._contract import Exporter, MetricType, exported

__all__ = [
    "ALEMBIC_METRICS",
    "EXPORTED_METRICS",
    "SIDECAR_METRICS",
    "MetricType",
    "series_names",
]


def _names(exporter: Exporter) -> dict[str, MetricType]:
    # Planned names are left out: a panel or an alert on a series nobody exports stays empty.
    return {spec.name: spec.type for spec in exported(exporter)}


# Name -> type, read from the contract (observer.metrics._contract, rendered in
# docs/reference.md). Dashboards and rules may only use these.
EXPORTED_METRICS: Final[dict[str, MetricType]] = _names("library")
"""What the library exports from the app's ``/metrics``."""

SIDECAR_METRICS: Final[dict[str, MetricType]] = _names("sidecar")
"""The server's view, exported by ``observer sidecar`` from pg_stat_activity and pg_locks."""

ALEMBIC_METRICS: Final[dict[str, MetricType]] = _names("alembic")
"""Migrations (exported by ``alembic upgrade`` through a textfile or a Pushgateway, see
docs/alembic.md) and schema drift (exported by the app: ``observer.alembic.watch_schema``)."""


def series_names(metrics: dict[str, MetricType]) -> frozenset[str]:
    """Every series name a scrape shows for ``metrics`` (histograms as _bucket, _sum, _count)."""
    names: set[str] = set()
    for name, kind in metrics.items():
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return frozenset(names)
