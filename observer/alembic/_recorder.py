"""What a migration run did, revision by revision: log events and the migration metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from observer._logs import logger
from observer.alembic._metrics import MigrationMetrics, Publisher
from observer.alembic._options import MigrationOptions

LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired (PostgreSQL errcodes.txt)
QUERY_CANCELED = "57014"  # statement_timeout expired, or pg_cancel_backend
_FIND_BLOCKER = (
    "another session holds a conflicting lock on the table: find it with SELECT pid, "
    "pg_blocking_pids(pid), state, left(query, 60) FROM pg_stat_activity WHERE "
    "cardinality(pg_blocking_pids(pid)) > 0; end it or wait for it, then run the migration again"
)


def classify(exc: BaseException) -> tuple[str, str | None]:
    """(outcome, SQLSTATE) of the exception a migration raised, looking through its causes."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        error = stack.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        # psycopg and asyncpg call it sqlstate; SQLAlchemy's asyncpg adapter also pgcode.
        code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(code, str) and code:
            if code == LOCK_NOT_AVAILABLE:
                return "lock_timeout", code
            if code == QUERY_CANCELED and "statement timeout" in str(error):
                return "statement_timeout", code
            return "failed", code
        for cause in (getattr(error, "orig", None), error.__cause__, error.__context__):
            if isinstance(cause, BaseException):
                stack.append(cause)
    return "failed", None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


@dataclass
class _Step:
    revision: str
    direction: str
    description: str
    started_at: float
    started: float


class MigrationRecorder:
    """Records each revision step Alembic runs: log events, metrics, published at each change."""

    def __init__(self, metrics: MigrationMetrics, publisher: Publisher, options: MigrationOptions):
        self.metrics = metrics
        self.publisher = publisher
        self.options = options
        self.current: _Step | None = None
        self.applied: list[tuple[str, str]] = []  # (revision, direction) that succeeded

    def wrap(self, steps_fn: Callable[..., Iterable[Any]]) -> Callable[..., Iterator[Any]]:
        """Wrap the step generator Alembic iterates: a step starts when it is handed out and
        has finished (version table updated) when Alembic asks for the next one."""

        def steps(heads: Any, context: Any) -> Iterator[Any]:
            for step in steps_fn(heads, context):
                self.step_started(step)
                yield step
                self.step_finished("success")

        return steps

    def begin(self) -> None:
        """The run starts: ``alembic_migration_running`` is 1."""
        self.metrics.running.set(1)
        self.publisher.publish()

    def end(self) -> None:
        """The run is over (whatever happened): ``alembic_migration_running`` is 0."""
        self.metrics.running.set(0)
        self.publisher.publish()

    def step_started(self, step: Any) -> None:
        """A revision step is about to run (stamps, which run nothing, are not recorded)."""
        info = step.info
        if info.is_stamp:
            self.current = None
            return
        now = time.time()
        self.current = _Step(
            revision=info.up_revision_id or "unknown",
            direction="upgrade" if info.is_upgrade else "downgrade",
            description=str(step),
            started_at=now,
            started=time.perf_counter(),
        )
        logger.info(
            "alembic.migration.started",
            revision=self.current.revision,
            direction=self.current.direction,
            step=self.current.description,
            started_at=_iso(now),
            lock_timeout_seconds=self.options.lock_timeout or None,
            statement_timeout_seconds=self.options.statement_timeout or None,
        )

    def step_finished(self, outcome: str, exc: BaseException | None = None) -> None:
        """The current step ended with ``outcome``: log it, count it, publish."""
        step, self.current = self.current, None
        if step is None:
            return
        duration = time.perf_counter() - step.started
        finished_at = step.started_at + duration
        self.metrics.record(
            revision=step.revision,
            direction=step.direction,
            outcome=outcome,
            finished_at=finished_at,
            duration=duration,
        )
        fields: dict[str, Any] = {
            "revision": step.revision,
            "direction": step.direction,
            "outcome": outcome,
            "step": step.description,
            "started_at": _iso(step.started_at),
            "finished_at": _iso(finished_at),
            "duration_seconds": round(duration, 3),
        }
        if outcome == "success":
            self.applied.append((step.revision, step.direction))
            logger.info("alembic.migration.finished", **fields)
        else:
            if exc is not None:
                first_line = str(exc).splitlines()[0] if str(exc) else ""
                fields["error"] = f"{type(exc).__name__}: {first_line}"
            if outcome == "lock_timeout":
                lock_timeout = self.options.lock_timeout
                waited = f"{lock_timeout:g}s" if lock_timeout else "the server's lock_timeout"
                logger.warning(
                    "alembic.migration.lock_timeout",
                    **fields,
                    sqlstate=LOCK_NOT_AVAILABLE,
                    lock_timeout_seconds=self.options.lock_timeout,
                    reason=f"gave up waiting for a lock after {waited} (lock_timeout) instead of "
                    "queueing the app's queries behind it",
                    hint=_FIND_BLOCKER,
                )
            elif outcome == "statement_timeout":
                logger.warning(
                    "alembic.migration.statement_timeout",
                    **fields,
                    statement_timeout_seconds=self.options.statement_timeout,
                    reason="a statement ran longer than statement_timeout and was cancelled",
                )
            else:
                logger.error("alembic.migration.failed", **fields)
        self.publisher.publish()

    def failed(self, exc: BaseException, *, rolled_back: bool) -> None:
        """The run raised: the current step (if any) failed; earlier steps of the same
        transaction were rolled back with it."""
        outcome, _ = classify(exc)
        self.step_finished(outcome, exc)
        if rolled_back and self.applied:
            logger.warning(
                "alembic.migrations.rolled_back",
                revisions=[revision for revision, _ in self.applied],
                reason="they ran in the same transaction as the step that failed "
                "(transaction_per_migration is off), so the database is back where it started",
            )
