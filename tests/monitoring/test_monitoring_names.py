"""The metric names dashboards and rules may use are exactly the ones the library exports."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text

from observer import Observer
from observer.monitoring._names import EXPORTED_METRICS, series_names


def test_names_match_what_an_observer_registers(
    registry: CollectorRegistry, make_observer: Callable[..., Observer]
) -> None:
    """A watched engine's registry holds exactly EXPORTED_METRICS, with the same types."""
    engine = create_engine("sqlite://")
    make_observer().watch(engine, name="main")
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    exported = {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in registry.collect()
    }
    assert exported == EXPORTED_METRICS
    engine.dispose()


def test_series_names_expand_histograms() -> None:
    """A histogram is read as _bucket, _sum and _count series; others by their own name."""
    assert series_names({"a_seconds": "histogram", "b_total": "counter", "c": "gauge"}) == {
        "a_seconds_bucket",
        "a_seconds_sum",
        "a_seconds_count",
        "b_total",
        "c",
    }
