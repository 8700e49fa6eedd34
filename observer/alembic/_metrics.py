"""The Alembic migration metrics, and where a short ``alembic upgrade`` process publishes them."""

from __future__ import annotations

import weakref
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import push_to_gateway, write_to_textfile

from observer._logs import logger

DIRECTIONS = ("upgrade", "downgrade")
OUTCOMES = ("success", "failed", "lock_timeout", "statement_timeout")
# A migration takes from a fraction of a second (ADD COLUMN) to an hour (a backfill).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class MigrationMetrics:
    """The migration metric families of one registry (created once per registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        # Multiprocess modes, for a migration run with PROMETHEUS_MULTIPROC_DIR set: "running"
        # leaves with its process, timestamps keep the latest value of any process.
        self.running = Gauge(
            "alembic_migration_running",
            "1 while this process applies Alembic migrations, 0 once it is done.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.total = Counter(
            "alembic_migrations",
            "Alembic revisions applied, by direction and outcome "
            "(success, failed, lock_timeout, statement_timeout).",
            ["direction", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "alembic_migration_duration_seconds",
            "Time one Alembic revision took to apply (upgrade or downgrade).",
            ["direction", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.last_timestamp = Gauge(
            "alembic_migration_last_timestamp_seconds",
            "Unix time at which a revision last finished, by revision, direction and outcome "
            "(changes() of it is a dashboard annotation).",
            ["revision", "direction", "outcome"],
            registry=r,
            multiprocess_mode="max",
        )
        self.last_duration = Gauge(
            "alembic_migration_last_duration_seconds",
            "How long a revision took the last time it was applied.",
            ["revision", "direction", "outcome"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        for direction in DIRECTIONS:  # 0 series from the start, so increase() sees the first
            for outcome in OUTCOMES:
                self.total.labels(direction, outcome)
                self.duration.labels(direction, outcome)

    def record(
        self, *, revision: str, direction: str, outcome: str, finished_at: float, duration: float
    ) -> None:
        """Count one revision applied (or not)."""
        self.total.labels(direction, outcome).inc()
        self.duration.labels(direction, outcome).observe(duration)
        self.last_timestamp.labels(revision, direction, outcome).set(finished_at)
        self.last_duration.labels(revision, direction, outcome).set(duration)


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, MigrationMetrics] = (
    weakref.WeakKeyDictionary()
)


def metrics_for(registry: CollectorRegistry) -> MigrationMetrics:
    """The migration metrics on ``registry``, registered on first use (runs can repeat)."""
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = _BY_REGISTRY[registry] = MigrationMetrics(registry)
    return metrics


class Publisher:
    """Writes a registry to a node_exporter textfile and/or pushes it to a Pushgateway.

    A failure is logged once per sink and never fails the migration.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        textfile: str | None,
        pushgateway: str | None,
        job: str,
        grouping_key: dict[str, str],
        timeout: float = 5.0,
    ) -> None:
        self.registry = registry
        self.textfile = textfile
        self.pushgateway = pushgateway
        self.job = job
        self.grouping_key = grouping_key
        self.timeout = timeout
        self.failed: set[str] = set()

    def publish(self) -> None:
        """Publish the registry's current values to every configured sink."""
        if self.textfile:
            # write_to_textfile writes a temporary file and renames it: the collector never
            # reads half a file.
            self._guard("textfile", write_to_textfile, self.textfile, self.registry)
        if self.pushgateway:
            self._guard(
                "pushgateway",
                push_to_gateway,
                self.pushgateway,
                job=self.job,
                registry=self.registry,
                grouping_key=self.grouping_key,
                timeout=self.timeout,
            )

    def _guard(self, sink: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            if sink not in self.failed:
                self.failed.add(sink)
                logger.warning(
                    "alembic.metrics_not_published",
                    sink=sink,
                    target=self.textfile
                    if sink == "textfile"
                    else _without_password(self.pushgateway),
                    error=f"{type(exc).__name__}: {exc}",
                    hint="the migration goes on; check the path or URL "
                    "(OBSERVER_ALEMBIC_TEXTFILE, OBSERVER_ALEMBIC_PUSHGATEWAY)",
                )


def _without_password(url: str | None) -> str | None:
    """The URL without user and password (a Pushgateway URL may carry basic-auth credentials)."""
    if not url:
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
