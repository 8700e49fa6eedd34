"""Schema drift: the database's Alembic revision against the head the running code expects."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Gauge
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from observer._dsn import display_database
from observer._logs import logger
from observer.server._revisions import (
    DEFAULT_VERSION_TABLE,
    CodeRevisions,
    SchemaState,
    read_revisions,
    read_revisions_sync,
)
from observer.settings import ConfigurationError

DEFAULT_INTERVAL = 60.0


class SchemaMetrics:
    """``alembic_schema_revision_info`` and ``alembic_schema_drift`` on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.info = Gauge(
            "alembic_schema_revision_info",
            "1 for the database's current Alembic revision and the head the code expects, "
            "with the state: current, behind, ahead or uninitialized.",
            ["database", "database_revision", "code_head", "state"],
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.drift = Gauge(
            "alembic_schema_drift",
            "1 when the database's Alembic revision is not the head the running code expects.",
            ["database"],
            registry=registry,
            multiprocess_mode="liveall",
        )


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, SchemaMetrics] = (
    weakref.WeakKeyDictionary()
)


def _metrics_for(registry: CollectorRegistry) -> SchemaMetrics:
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = _BY_REGISTRY[registry] = SchemaMetrics(registry)
    return metrics


class SchemaWatcher:
    """Checks a database's Alembic revision against the code's head, at start and every
    ``interval`` seconds (one short query each time), and exports the result as metrics.

    ``await check()`` (or ``check_sync()`` for a sync ``Engine``) checks once; ``start()`` checks
    at once and then periodically, in an asyncio task when an event loop runs (call it from the
    app's startup) or in a daemon thread for a sync ``Engine``; ``close()`` stops it.
    """

    def __init__(
        self,
        engine: Engine | AsyncEngine,
        *,
        script_location: str | None = None,
        alembic_config: str | None = None,
        registry: CollectorRegistry | None = None,
        interval: float = DEFAULT_INTERVAL,
        version_table: str = DEFAULT_VERSION_TABLE,
        version_table_schema: str | None = None,
        database: str | None = None,
    ) -> None:
        if not isinstance(engine, Engine | AsyncEngine):
            raise ConfigurationError(
                f"expected a SQLAlchemy Engine or AsyncEngine, got {type(engine).__name__}"
            )
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ConfigurationError(
                f"interval must be a number of seconds > 0 (got {interval!r}); it is how often "
                "the database's Alembic revision is read"
            )
        self.engine = engine
        self.code = CodeRevisions(script_location=script_location, alembic_config=alembic_config)
        self.metrics = _metrics_for(REGISTRY if registry is None else registry)
        self.interval = float(interval)
        self.version_table = version_table
        self.version_table_schema = version_table_schema
        self.database = database or display_database(engine.url)
        self.latest: SchemaState | None = None
        self._labels: tuple[str, str, str, str] | None = None
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    async def check(self) -> SchemaState:
        """Read the database's revision now (one connection, briefly) and export the result."""
        if isinstance(self.engine, AsyncEngine):
            async with self.engine.connect() as conn:
                revisions = await read_revisions(
                    conn,
                    version_table=self.version_table,
                    version_table_schema=self.version_table_schema,
                )
                await conn.rollback()
            return self._publish(revisions)
        return await asyncio.to_thread(self.check_sync)

    def check_sync(self) -> SchemaState:
        """:meth:`check` for a sync ``Engine``."""
        if not isinstance(self.engine, Engine):
            raise ConfigurationError("check_sync() needs a sync Engine; use await check()")
        with self.engine.connect() as conn:
            revisions = read_revisions_sync(
                conn,
                version_table=self.version_table,
                version_table_schema=self.version_table_schema,
            )
            conn.rollback()
        return self._publish(revisions)

    def _publish(self, revisions: tuple[str, ...]) -> SchemaState:
        state = self.code.compare(self.database, revisions)
        labels = (self.database, state.database_revision, state.code_head, state.state)
        if labels != self._labels:
            if self._labels is not None:
                # Multiprocess files cannot forget a series: 0 first, so `== 1` never sees it.
                self.metrics.info.labels(*self._labels).set(0)
                self.metrics.info.remove(*self._labels)
            self._labels = labels
            log = logger.warning if state.drift else logger.info
            log(
                "alembic.schema_drift" if state.drift else "alembic.schema_current",
                database=self.database,
                database_revision=state.database_revision,
                code_head=state.code_head,
                state=state.state,
            )
        self.metrics.info.labels(*labels).set(1)
        self.metrics.drift.labels(self.database).set(1 if state.drift else 0)
        self.latest = state
        self._failing = False
        return state

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "alembic.schema_check_failed",
                database=self.database,
                error=type(exc).__name__,
                hint="the last known state stays exported; the check is retried",
            )

    def start(self) -> SchemaWatcher:
        """Check now and every ``interval`` seconds, in the background."""
        if self._task is not None or self._thread is not None:
            return self
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            self._task = loop.create_task(self._run(), name="observer-schema-watcher")
        elif isinstance(self.engine, Engine):
            self._thread = threading.Thread(
                target=self._run_thread, name="observer-schema-watcher", daemon=True
            )
            self._thread.start()
        else:
            raise ConfigurationError(
                "an AsyncEngine is watched from a running event loop: call watch_schema() in "
                "the app's startup (FastAPI lifespan), not at import time"
            )
        return self

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.check(), timeout=max(self.interval, 10.0))
            except Exception as exc:
                self._failed(exc)
            await asyncio.sleep(self.interval)

    def _run_thread(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_sync()
            except Exception as exc:
                self._failed(exc)
            self._stop.wait(self.interval)

    def close(self) -> None:
        """Stop the periodic check (the exported values stay)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(5)
            self._thread = None

    async def aclose(self) -> None:
        """Stop the periodic check and wait until it has stopped."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.close()


def watch_schema(
    engine: Engine | AsyncEngine,
    *,
    script_location: str | None = None,
    alembic_config: str | None = None,
    registry: CollectorRegistry | None = None,
    interval: float = DEFAULT_INTERVAL,
    version_table: str = DEFAULT_VERSION_TABLE,
    version_table_schema: str | None = None,
    database: str | None = None,
) -> SchemaWatcher:
    """Export the database's Alembic revision against the code's head, now and every
    ``interval`` seconds; returns the started :class:`SchemaWatcher` (``close()`` stops it).

    Give ``script_location`` (the directory with ``env.py`` and ``versions/``) or
    ``alembic_config`` (the path of ``alembic.ini``); a wrong one fails here, at startup.
    """
    return SchemaWatcher(
        engine,
        script_location=script_location,
        alembic_config=alembic_config,
        registry=registry,
        interval=interval,
        version_table=version_table,
        version_table_schema=version_table_schema,
        database=database,
    ).start()
