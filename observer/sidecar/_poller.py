"""Poll pg_stat_activity on an interval in a thread of its own, and expose the last result."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from observer._dsn import display_url
from observer.metrics._contract import BY_NAME
from observer.server._label import server_label
from observer.server._view import Activity, ServerSettings, read_activity, read_settings

log = logging.getLogger("observer.sidecar")

SIDECAR_APPLICATION_NAME = "pool-observer-sidecar"


@dataclass(frozen=True)
class Poll:
    """The outcome of the latest poll (immutable: scrapes read it without a lock)."""

    up: bool = False
    activity: Activity | None = None
    settings: ServerSettings | None = None
    duration_seconds: float = 0.0
    finished_at: float = 0.0  # time.time() of the end of the latest poll, 0 before the first
    polls: int = 0
    errors: int = 0
    error: str = ""  # exception class of the latest failure


class ServerPoller:
    """Reads what PostgreSQL sees of one application_name, every ``interval`` seconds.

    The poll runs on its own event loop in a daemon thread; scrapes only read ``latest``,
    so a slow database never slows a scrape and a slow scrape never delays a poll.
    """

    def __init__(
        self,
        database_url: str,
        *,
        application_name: str,
        interval: float,
        statement_timeout_ms: int,
        connect_timeout: float,
        databases: tuple[str, ...] = (),
    ) -> None:
        self.url = make_url(database_url).set(drivername="postgresql+asyncpg")
        self.shown = display_url(database_url)  # for logs: never the password or the query
        self.server = server_label(database_url)  # host:port, the label the rules join on
        self.application_name = application_name
        self.interval = interval
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout = connect_timeout
        self.databases = databases  # () is the URL's database
        self.latest = Poll()
        self.heartbeat = time.monotonic()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="observer-poller", daemon=True)

    @property
    def poll_deadline(self) -> float:
        """Longest a poll may take: connecting plus the queries."""
        return self.connect_timeout + self.statement_timeout_ms / 1000 + 1

    def start(self) -> None:
        """Start polling (the first poll starts at once)."""
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop polling and close the connection; waits for the thread to end."""
        self._stopping.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(wake.set)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def alive(self) -> bool:
        """Whether the poller thread runs and has not stalled."""
        stalled_after = max(3 * self.interval, self.interval + self.poll_deadline) + 5
        return self._thread.is_alive() and time.monotonic() - self.heartbeat < stalled_after

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        engine = create_async_engine(
            self.url,
            pool_size=1,
            max_overflow=0,
            pool_pre_ping=True,
            pool_recycle=300,
            connect_args={
                "timeout": self.connect_timeout,
                "server_settings": {
                    "application_name": SIDECAR_APPLICATION_NAME,
                    "statement_timeout": str(self.statement_timeout_ms),
                },
            },
        )
        try:
            while not self._stopping.is_set():
                await self.poll_once(engine)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
        finally:
            await engine.dispose()

    async def poll_once(self, engine: AsyncEngine) -> Poll:
        """Query the server once and publish the result; never raises."""
        started = time.perf_counter()
        previous = self.latest
        try:
            async with asyncio.timeout(self.poll_deadline):
                async with engine.connect() as conn:
                    activity = await read_activity(conn, self.application_name, self.databases)
                    settings = await read_settings(conn)
                    await conn.rollback()
        except Exception as exc:
            error = type(exc).__name__
            if previous.up or previous.polls == 0:
                # Only the class: driver messages may carry query text or values.
                log.warning("database unreachable from the sidecar: %s (%s)", error, self.shown)
            poll = Poll(
                up=False,
                duration_seconds=time.perf_counter() - started,
                finished_at=time.time(),
                polls=previous.polls + 1,
                errors=previous.errors + 1,
                error=error,
            )
        else:
            if not previous.up and previous.polls:
                log.info("database reachable again from the sidecar (%s)", self.shown)
            poll = Poll(
                up=True,
                activity=activity,
                settings=settings,
                duration_seconds=time.perf_counter() - started,
                finished_at=time.time(),
                polls=previous.polls + 1,
                errors=previous.errors,
            )
        self.latest = poll
        self.heartbeat = time.monotonic()
        return poll


class ServerViewCollector:
    """Prometheus metrics from a poller's latest poll (postgres_exporter names where they exist)."""

    def __init__(self, poller: ServerPoller) -> None:
        self.poller = poller

    def collect(self) -> Iterator[Metric]:
        """The server view, as of the latest poll."""
        poll = self.poller.latest
        app = self.poller.application_name
        yield GaugeMetricFamily(
            "pg_up", "Whether the last poll of the database succeeded (1) or not (0).", poll.up
        )
        polls = CounterMetricFamily(
            "pg_observer_polls", "Polls of pg_stat_activity by the sidecar.", poll.polls
        )
        yield polls
        yield CounterMetricFamily(
            "pg_observer_poll_errors",
            "Polls of pg_stat_activity that failed (database down, timeout, ...).",
            poll.errors,
        )
        yield GaugeMetricFamily(
            "pg_observer_poll_duration_seconds",
            "How long the latest poll of pg_stat_activity took.",
            poll.duration_seconds,
        )
        activity = poll.activity
        if not poll.up or activity is None:
            return  # no stale numbers while the database is unreachable: pg_up says why
        count = GaugeMetricFamily(
            "pg_stat_activity_count",
            "Backends of the application by database and state (as postgres_exporter).",
            labels=["datname", "state", "application_name"],
        )
        max_tx = GaugeMetricFamily(
            "pg_stat_activity_max_tx_duration",
            "Age in seconds of the oldest transaction by database and state "
            "(as postgres_exporter).",
            labels=["datname", "state", "application_name"],
        )
        for (datname, state), (n, oldest) in sorted(activity.by_state.items()):
            count.add_metric([datname, state, app], n)
            max_tx.add_metric([datname, state, app], oldest)
        yield count
        yield max_tx
        idle = GaugeMetricFamily(
            "pg_observer_idle_in_transaction_max_seconds",
            "Seconds the application's oldest idle-in-transaction backend has been idle.",
            labels=["application_name"],
        )
        idle.add_metric([app], activity.idle_in_transaction_max_seconds)
        yield idle
        oldest_tx = GaugeMetricFamily(
            "pg_observer_oldest_transaction_seconds",
            "Age in seconds of the application's oldest open transaction.",
            labels=["application_name"],
        )
        oldest_tx.add_metric([app], activity.oldest_transaction_seconds)
        yield oldest_tx
        waiting = GaugeMetricFamily(
            "pg_observer_lock_waiting_backends",
            "Client backends waiting for a lock, by database.",
            labels=["datname"],
        )
        longest = GaugeMetricFamily(
            "pg_observer_lock_wait_max_seconds",
            "Seconds the longest current lock wait has lasted, by database.",
            labels=["datname"],
        )
        for datname, (n, seconds) in sorted(activity.lock_waits.items()):
            waiting.add_metric([datname], n)
            longest.add_metric([datname], seconds)
        yield waiting
        yield longest
        if poll.settings is not None:
            yield from _settings(poll.settings, self.poller.server)


# postgres_exporter's names (and its server label); help and labels from the contract.
_SETTINGS = ("max_connections", "superuser_reserved_connections", "reserved_connections")


def _settings(settings: ServerSettings, server: str) -> Iterator[Metric]:
    """The connection limits of the server, labelled with its ``host:port``."""
    for setting in _SETTINGS:
        spec = BY_NAME[f"pg_settings_{setting}"]
        family = GaugeMetricFamily(spec.name, spec.help, labels=list(spec.labels))
        family.add_metric([server], getattr(settings, setting))
        yield family
