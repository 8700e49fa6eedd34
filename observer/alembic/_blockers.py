"""Who blocks the migration, seen from a second connection while its statement waits on a lock."""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from observer.alembic._log import log

QUERY_CHARS = 80
# The relation the migration waits for, and each backend it waits behind (pg_blocking_pids: the
# holders of a conflicting lock and the conflicting waiters queued ahead), oldest first.
BLOCKERS_SQL = text(
    """
SELECT
  (SELECT l.relation::regclass::text FROM pg_locks l
   WHERE l.pid = :pid AND NOT l.granted AND l.relation IS NOT NULL LIMIT 1) AS table_name,
  a.pid, a.application_name, a.state,
  extract(epoch FROM clock_timestamp() - a.xact_start)::float8 AS xact_age,
  left(a.query, 2000) AS query
FROM pg_stat_activity a
WHERE a.pid = ANY(pg_blocking_pids(:pid))
ORDER BY a.xact_start NULLS LAST
"""
)
# Literals in a query's text (psycopg2 and PgBouncer send values inline): strings, dollar-quoted
# strings and numbers, replaced by `?` before anything is logged.
_LITERALS = re.compile(r"'(?:[^']|'')*'?|\$(\w*)\$.*?\$\1\$|(?<![\w$])\d+(?:\.\d+)?", re.DOTALL)


def query_prefix(query: str | None) -> str:
    """The start of ``query`` on one line, literals replaced by ``?``, at most 80 characters."""
    if not query:
        return ""
    flat = " ".join(_LITERALS.sub("?", query).split())
    return flat if len(flat) <= QUERY_CHARS else flat[: QUERY_CHARS - 3] + "..."


@dataclass(frozen=True)
class Blocker:
    """A backend the migration's statement waits behind."""

    pid: int
    application_name: str
    state: str
    xact_age_seconds: float | None
    query: str


@dataclass(frozen=True)
class LockWait:
    """What one look at the server saw: the table waited for, and who blocks it."""

    table: str | None
    blockers: tuple[Blocker, ...]

    def fields(self) -> dict[str, Any]:
        """Log fields: the table, the first (oldest) blocker, how many there are."""
        first = self.blockers[0]
        age = first.xact_age_seconds
        return {
            "table": self.table,
            "blocker_pid": first.pid,
            "blocker_application_name": first.application_name,
            "blocker_state": first.state,
            "blocker_xact_age_seconds": None if age is None else round(age, 1),
            "blocker_query": first.query,
            "blockers": len(self.blockers),
        }

    def describe(self) -> str:
        """The blocker in a sentence fragment, for the final error."""
        first = self.blockers[0]
        age = first.xact_age_seconds
        opened = f", transaction open {age:.1f}s" if age is not None else ""
        more = f" (and {len(self.blockers) - 1} more)" if len(self.blockers) > 1 else ""
        return (
            f"on table {self.table or 'unknown'}, blocked by pid {first.pid}{more} "
            f"(application_name {first.application_name!r}, {first.state}{opened}): "
            f"{first.query}"
        )


def _wait_of(rows: list[Any]) -> LockWait | None:
    if not rows:
        return None
    blockers = tuple(
        Blocker(
            pid=int(row.pid),
            application_name=row.application_name or "",
            state=row.state or "unknown",
            xact_age_seconds=row.xact_age,
            query=query_prefix(row.query),
        )
        for row in rows
    )
    return LockWait(rows[0].table_name, blockers)


class BlockerWatch:
    """A daemon thread with its own connection, polling who blocks the migration's backend.

    It only reads ``pg_stat_activity`` and ``pg_locks``; it never touches the migration's
    connection. If it cannot connect, that is logged once and the migration goes on.
    """

    def __init__(self, url: URL, pid: int, *, is_async: bool, interval: float) -> None:
        self.url = url
        self.pid = pid
        self.is_async = is_async
        self.interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seen: LockWait | None = None
        self._ready = threading.Event()  # connected, or failed
        self.error: str | None = None
        self._thread = threading.Thread(
            target=self._run, name="observer-alembic-blockers", daemon=True
        )

    def start(self, timeout: float = 2.0) -> BlockerWatch:
        """Start polling; waits (at most ``timeout``) for the connection, so that the first
        attempt is watched too."""
        self._thread.start()
        self._ready.wait(timeout)
        return self

    def stop(self) -> None:
        """Stop polling and close the connection (waits for the thread, bounded)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def take(self) -> LockWait | None:
        """The last lock wait seen since the previous call (None: none seen)."""
        with self._lock:
            seen, self._seen = self._seen, None
        return seen

    def _note(self, rows: list[Any]) -> None:
        wait = _wait_of(rows)
        if wait is not None:
            with self._lock:
                self._seen = wait

    def _run(self) -> None:
        try:
            if self.is_async:
                asyncio.run(self._poll_async())
            else:
                self._poll_sync()
        except Exception as exc:
            self.error = type(exc).__name__
            self._ready.set()
            log(
                "warning",
                "alembic.blocker_watch_failed",
                error=self.error,
                reason="the second connection that names who blocks a migration failed; the "
                "migration goes on, its lock timeouts will not name the blocker",
            )

    def _poll_sync(self) -> None:
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                self._ready.set()
                while not self._stop.is_set():
                    self._note(list(conn.execute(BLOCKERS_SQL, {"pid": self.pid})))
                    conn.rollback()
                    self._stop.wait(self.interval)
        finally:
            engine.dispose()

    async def _poll_async(self) -> None:
        engine = create_async_engine(self.url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                self._ready.set()
                while not self._stop.is_set():
                    result = await conn.execute(BLOCKERS_SQL, {"pid": self.pid})
                    self._note(list(result))
                    await conn.rollback()
                    await asyncio.sleep(self.interval)
        finally:
            await engine.dispose()


def poll_interval(lock_timeout: float) -> float:
    """Several looks per lock wait: a fifth of ``lock_timeout``, between 20 ms and 200 ms."""
    if not lock_timeout:
        return 0.2
    return min(0.2, max(0.02, lock_timeout / 5))
