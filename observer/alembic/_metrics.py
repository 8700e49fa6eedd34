"""The Alembic migration metrics, and where a short ``alembic upgrade`` process publishes them."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import push_to_gateway, write_to_textfile
from prometheus_client.metrics_core import Metric

from observer.alembic._history import Families, merge, read_pushgateway, read_textfile
from observer.alembic._log import log

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
            "Alembic revisions run to their last attempt, by direction and final outcome "
            "(success, failed, lock_timeout, statement_timeout).",
            ["direction", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "alembic_migration_retries",
            "Attempts at an Alembic revision that gave up on a lock (lock_timeout) and were "
            "tried again, by direction and the attempt's outcome.",
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
            self.retries.labels(direction, "lock_timeout")

    def retried(self, *, direction: str, outcome: str) -> None:
        """Count one attempt that gave up and is tried again."""
        self.retries.labels(direction, outcome).inc()

    def record(
        self, *, revision: str, direction: str, outcome: str, finished_at: float, duration: float
    ) -> None:
        """Count one revision applied (or not, after its last attempt)."""
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


class _Merged:
    """A collector: the registry's families with a sink's earlier runs added (``_history``)."""

    def __init__(self, registry: CollectorRegistry, previous: Families) -> None:
        self.registry = registry
        self.previous = previous

    def collect(self) -> list[Metric]:
        return merge(self.registry.collect(), self.previous)


class Publisher:
    """Writes a registry to a node_exporter textfile and/or pushes it to a Pushgateway, each
    with what earlier runs left there added (read once, by :meth:`load_history`).

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
        self.outputs: dict[str, CollectorRegistry] = {}

    def load_history(self) -> None:
        """Read what earlier runs published to each sink; from now on it is added in."""
        names = [family.name for family in self.registry.collect()]
        sinks: dict[str, tuple[str | None, Callable[[], Families]]] = {
            "textfile": (self.textfile, lambda: read_textfile(str(self.textfile), names)),
            "pushgateway": (
                self.pushgateway,
                lambda: read_pushgateway(
                    str(self.pushgateway), self.job, self.grouping_key, names, self.timeout
                ),
            ),
        }
        for sink, (target, read) in sinks.items():
            if not target:
                continue
            try:
                previous = read()
            except Exception as exc:
                previous = {}
                log(
                    "warning",
                    "alembic.metrics_history_unavailable",
                    sink=sink,
                    target=self._target(sink),
                    error=f"{type(exc).__name__}: {exc}",
                    reason="this run's counts replace the earlier runs' (increase() sees a "
                    "counter reset)",
                )
            output = CollectorRegistry(auto_describe=False)
            output.register(_Merged(self.registry, previous))
            self.outputs[sink] = output

    def publish(self) -> None:
        """Publish the registry's current values (plus history) to every configured sink."""
        if self.textfile:
            # write_to_textfile writes a temporary file and renames it: the collector never
            # reads half a file.
            self._guard(
                "textfile",
                write_to_textfile,
                self.textfile,
                self.outputs.get("textfile", self.registry),
            )
        if self.pushgateway:
            # PUT of the whole group: it already holds the earlier runs' counts, added in.
            self._guard(
                "pushgateway",
                push_to_gateway,
                self.pushgateway,
                job=self.job,
                registry=self.outputs.get("pushgateway", self.registry),
                grouping_key=self.grouping_key,
                timeout=self.timeout,
            )

    def _target(self, sink: str) -> str | None:
        return self.textfile if sink == "textfile" else _without_password(self.pushgateway)

    def _guard(self, sink: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            if sink not in self.failed:
                self.failed.add(sink)
                log(
                    "warning",
                    "alembic.metrics_not_published",
                    sink=sink,
                    target=self._target(sink),
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
