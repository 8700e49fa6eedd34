"""The metric contract table is what the library, the sidecar and observer.alembic export, and
docs/reference.md is its rendering."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import Metric
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from observer import Observer
from observer._reference import render
from observer.alembic._metrics import metrics_for
from observer.alembic._schema_drift import SchemaMetrics
from observer.metrics._contract import METRICS, MetricSpec, exported
from observer.metrics._families import Metrics
from observer.metrics._multiprocess import MultiprocessDirectory
from observer.server._view import Activity, ServerSettings
from observer.sidecar._poller import Poll, ServerViewCollector

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"

# name -> (type, labels, help, buckets): one family as a scrape shows it.
Family = tuple[str, tuple[str, ...], str, tuple[float, ...] | None]


def families(*collections: CollectorRegistry | list[Metric]) -> dict[str, Family]:
    """The families of one or more collections (a registry, or ``list(registry.collect())``);
    a family's labels come from the first collection in which it has samples."""
    found: dict[str, Family] = {}
    for collection in collections:
        metrics = collection.collect() if isinstance(collection, CollectorRegistry) else collection
        for family in metrics:
            name = family.name + ("_total" if family.type == "counter" else "")
            if name not in found and family.samples:
                found[name] = _family(family)
    return found


def _family(family: Metric) -> Family:
    labels = {tuple(k for k in s.labels if k != "le") for s in family.samples}
    assert len(labels) == 1, (family, labels)  # every sample of a family has the same labels
    buckets = None
    if family.type == "histogram":
        bounds = [s.labels["le"] for s in family.samples if s.name.endswith("_bucket")]
        buckets = tuple(float(b) for b in dict.fromkeys(bounds) if b != "+Inf")
    return (family.type, labels.pop(), family.documentation, buckets)


def contract(specs: tuple[MetricSpec, ...]) -> dict[str, Family]:
    """What the table promises for ``specs``."""
    return {s.name: (s.type, s.labels, s.help, s.buckets) for s in specs}


def planned_names() -> set[str]:
    return {s.name for s in METRICS if s.planned}


def test_docs_reference_is_the_rendering_of_the_contract_and_the_settings() -> None:
    """docs/reference.md is exactly what ``python -m observer._reference`` writes (regenerate it
    after changing a metric spec or an option)."""
    assert REFERENCE.read_text(encoding="utf-8") == render()


def test_every_planned_name_is_documented_and_the_table_has_no_duplicates() -> None:
    """The planned names of issue #12 are in the table, marked planned (the double handouts are
    exported since issue #21, the leak origins and the held-idle pair since issue #18, the
    server's connection settings since issue #19), and each name is listed once."""
    assert planned_names() == set()
    assert len({s.name for s in METRICS}) == len(METRICS)
    assert Counter((s.exporter, s.planned) for s in METRICS) == {
        ("library", False): 35,
        ("sidecar", False): 15,
        ("alembic", False): 8,
    }
    assert all(s.name.endswith("_total") == (s.type == "counter") for s in METRICS)


async def test_an_observer_exports_exactly_the_library_contract(
    tmp_path: Path, registry: CollectorRegistry, make_observer: Callable[..., Observer]
) -> None:
    """After a watched engine served one request through the middleware (a checkout and a
    session), the registry holds every exported library name of the table with its type,
    labels, help and buckets, nothing more, and none of the planned names."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/contract.db")
    obs = make_observer()
    obs.watch(engine, name="main")
    Session = async_sessionmaker(engine)
    during: list[Metric] = []

    async def session() -> AsyncIterator[AsyncSession]:
        async with Session() as s:
            yield s

    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: int, s: AsyncSession = Depends(session)) -> int:  # noqa: B008
        value = (await s.execute(text("SELECT :v"), {"v": item_id})).scalar_one()
        during.extend(registry.collect())  # while the request holds its connection
        return int(value)

    transport = httpx.ASGITransport(app=obs.middleware(api))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/items/7")).json() == 7
    try:
        exported_now = families(registry, during)
    finally:
        await engine.dispose()
    assert exported_now == contract(exported("library"))
    assert not planned_names() & set(exported_now)
    assert exported_now["sqlalchemy_route_connections_held"][1] == ("route",)


def test_multiprocess_gauges_follow_the_contract() -> None:
    """Under PROMETHEUS_MULTIPROC_DIR the library's gauges are real gauges with the table's
    labels, help and multiprocess mode (prometheus-client keeps the mode in
    ``_multiprocess_mode``): per worker for pool state, summed for the totals."""
    metrics = Metrics(CollectorRegistry(), multiprocess=True)
    gauges: dict[str, Gauge | None] = {
        **metrics.pool_gauges,
        "sqlalchemy_pools": metrics.live_pools,
        "sqlalchemy_orm_sessions_open": metrics.sessions_open,
        "sqlalchemy_route_connections_held": metrics.route_held,
        "sqlalchemy_pool_oldest_checkout_seconds": metrics.pool_oldest,
        "sqlalchemy_route_oldest_checkout_seconds": metrics.route_oldest,
    }
    expected = {s.name: s for s in exported("library") if s.type == "gauge"}
    assert set(gauges) == set(expected)
    for name, gauge in gauges.items():
        assert gauge is not None
        spec = expected[name]
        described = gauge.describe()[0]
        assert (described.name, described.documentation) == (name, spec.help)
        assert gauge._labelnames == spec.labels
        assert gauge._multiprocess_mode == spec.multiprocess_mode
    assert {n for n, s in expected.items() if s.multiprocess_mode == "liveall"} == {
        n for n in expected if n.startswith("sqlalchemy_pool_")
    }
    assert {n for n, s in expected.items() if s.multiprocess_mode == "livemax"} == {
        "sqlalchemy_route_oldest_checkout_seconds"
    }


def test_the_sidecar_exports_exactly_the_sidecar_contract(tmp_path: Path) -> None:
    """The sidecar's server view (a poll that found backends, a lock wait and the server's
    settings) and its multiprocess directory export every exported sidecar name of the table,
    nothing more."""

    class Poller:
        application_name = "app"
        server = "db:5432"
        latest = Poll(
            up=True,
            activity=Activity(
                application_name="app",
                database="app",
                by_state={("app", "active"): (1, 0.5)},
                lock_waits={"app": (1, 2.0)},
            ),
            settings=ServerSettings(
                max_connections=100,
                superuser_reserved_connections=3,
                reserved_connections=0,
                idle_session_timeout=None,
                idle_in_transaction_session_timeout=None,
                statement_timeout=None,
                tcp_keepalives_idle=None,
            ),
            duration_seconds=0.01,
            polls=3,
            errors=1,
        )

    registry = CollectorRegistry()
    registry.register(ServerViewCollector(Poller()))  # type: ignore[arg-type]
    MultiprocessDirectory(str(tmp_path)).register(registry)
    exported_now = families(registry)
    assert exported_now == contract(exported("sidecar"))
    assert not planned_names() & set(exported_now)


def test_observer_alembic_exports_exactly_the_alembic_contract() -> None:
    """One recorded migration and one schema check export every alembic name of the table."""
    registry = CollectorRegistry()
    migrations = metrics_for(registry)
    migrations.running.set(0)
    migrations.record(
        revision="abc123", direction="upgrade", outcome="success", finished_at=1.0, duration=0.2
    )
    schema = SchemaMetrics(registry)
    schema.info.labels("app", "abc123", "abc123", "current").set(1)
    schema.drift.labels("app").set(0)
    assert families(registry) == contract(exported("alembic"))
