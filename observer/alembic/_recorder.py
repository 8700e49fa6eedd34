"""What a migration run did, revision by revision and attempt by attempt: log lines, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from observer.alembic._blockers import LockWait
from observer.alembic._log import log
from observer.alembic._metrics import MigrationMetrics, Publisher
from observer.alembic._options import MigrationOptions

LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired (PostgreSQL errcodes.txt)
QUERY_CANCELED = "57014"  # statement_timeout expired, or pg_cancel_backend
_FIND_BLOCKER = (
    "the blocker was not seen (it was gone, or the second connection failed): find it with "
    "SELECT pid, pg_blocking_pids(pid), state, left(query, 60) FROM pg_stat_activity WHERE "
    "cardinality(pg_blocking_pids(pid)) > 0"
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


def first_line(exc: BaseException) -> str:
    """``Class: first line of the message``: what a log line or a short error may say."""
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message.splitlines()[0]}" if message else type(exc).__name__


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


@dataclass
class _Step:
    revision: str
    direction: str
    description: str
    started_at: float
    started: float


@dataclass
class Attempt:
    """How one attempt at the run ended, as the last step it was in saw it."""

    outcome: str
    revision: str | None
    direction: str | None
    wait: LockWait | None
    error: str


class MigrationRecorder:
    """Records each revision step Alembic runs: log events, metrics, published at each change.

    ``per_migration``: each revision commits on its own, so a step that finished stays done
    when a later one fails; otherwise (one transaction for the run) a failure undoes every
    step of the attempt, and their successes are counted only once the run commits.
    """

    def __init__(
        self,
        metrics: MigrationMetrics,
        publisher: Publisher,
        options: MigrationOptions,
        *,
        per_migration: bool,
    ):
        self.metrics = metrics
        self.publisher = publisher
        self.options = options
        self.per_migration = per_migration
        self.current: _Step | None = None
        self.attempt = 1
        self.done = 0  # steps of the plan that are committed
        self.applied: list[tuple[str, str]] = []  # (revision, direction) that succeeded
        self._pending: list[dict[str, Any]] = []  # successes not committed yet

    def wrap(self, steps_fn: Callable[..., Iterable[Any]]) -> Callable[..., Iterator[Any]]:
        """Wrap the step generator Alembic iterates: a step starts when it is handed out and
        has finished (version table updated) when Alembic asks for the next one.

        The steps are planned once, on the first attempt: a retry runs the rest of that plan,
        never a plan recomputed from a relative target (``+2``) after some steps committed.
        """
        plan: list[Any] | None = None

        def steps(heads: Any, context: Any) -> Iterator[Any]:
            nonlocal plan
            if plan is None:
                plan = list(steps_fn(heads, context))
            for step in plan[self.done :]:
                self.step_started(step)
                yield step
                self.step_finished()

        return steps

    def begin(self) -> None:
        """The run starts: ``alembic_migration_running`` is 1."""
        self.metrics.running.set(1)
        self.publisher.publish()

    def end(self, *, committed: bool) -> None:
        """The run is over (whatever happened): ``alembic_migration_running`` is 0; with
        ``committed``, the successes of a single-transaction run are counted."""
        if committed:
            for record in self._pending:
                self.metrics.record(**record)
        self._pending.clear()
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
        log(
            "info",
            "alembic.migration.started",
            revision=self.current.revision,
            direction=self.current.direction,
            step=self.current.description,
            attempt=self.attempt,
            started_at=_iso(now),
            lock_timeout_seconds=self.options.lock_timeout or None,
            statement_timeout_seconds=self.options.statement_timeout or None,
        )

    def step_finished(self) -> None:
        """The current step succeeded: log it, count it (now, or at commit), publish."""
        if self.per_migration:  # committed: a retry starts after it
            self.done += 1
        step, self.current = self.current, None
        if step is None:
            return
        duration = time.perf_counter() - step.started
        record = self._record(step, "success", duration)
        self.applied.append((step.revision, step.direction))
        if self.per_migration:
            self.metrics.record(**record)
        else:
            self._pending.append(record)
        log(
            "info",
            "alembic.migration.finished",
            revision=step.revision,
            direction=step.direction,
            outcome="success",
            step=step.description,
            attempt=self.attempt,
            started_at=_iso(step.started_at),
            finished_at=_iso(record["finished_at"]),
            duration_seconds=round(duration, 3),
        )
        self.publisher.publish()

    def _record(self, step: _Step, outcome: str, duration: float) -> dict[str, Any]:
        return {
            "revision": step.revision,
            "direction": step.direction,
            "outcome": outcome,
            "finished_at": step.started_at + duration,
            "duration": duration,
        }

    def attempt_failed(
        self, exc: BaseException, *, wait: LockWait | None, retry_in: float | None
    ) -> Attempt:
        """The attempt raised: one line for it; with ``retry_in`` (seconds) it is tried again,
        else the current step's outcome is final and counted."""
        outcome, code = classify(exc)
        step, self.current = self.current, None
        attempt = Attempt(outcome, None, None, wait, first_line(exc))
        if not self.per_migration:
            self._rolled_back(final=retry_in is None)
        if step is None:
            log("error", "alembic.migration.failed", outcome=outcome, error=attempt.error)
            return attempt
        attempt.revision, attempt.direction = step.revision, step.direction
        duration = time.perf_counter() - step.started
        fields: dict[str, Any] = {
            "revision": step.revision,
            "direction": step.direction,
            "outcome": outcome,
            "attempt": self.attempt,
            "max_attempts": self.options.max_attempts,
            "duration_seconds": round(duration, 3),
        }
        if retry_in is not None:
            self.metrics.retried(direction=step.direction, outcome=outcome)
        else:
            self.metrics.record(**self._record(step, outcome, duration))
        if outcome == "lock_timeout":
            fields["lock_timeout_seconds"] = self.options.lock_timeout
            fields.update(wait.fields() if wait is not None else {"hint": _FIND_BLOCKER})
            fields["retry_in_seconds"] = None if retry_in is None else round(retry_in, 2)
            fields["will_retry"] = retry_in is not None
            log("warning", "alembic.migration.lock_timeout", **fields, sqlstate=code)
        elif outcome == "statement_timeout":
            fields["statement_timeout_seconds"] = self.options.statement_timeout
            log("warning", "alembic.migration.statement_timeout", **fields, error=attempt.error)
        else:
            log("error", "alembic.migration.failed", **fields, error=attempt.error, sqlstate=code)
        self.publisher.publish()
        return attempt

    def next_attempt(self) -> None:
        """A new attempt begins (after the backoff)."""
        self.attempt += 1

    def interrupted(self, exc: BaseException) -> None:
        """The run was interrupted (KeyboardInterrupt, SystemExit): the step failed."""
        self.attempt_failed(exc, wait=None, retry_in=None)

    def _rolled_back(self, *, final: bool) -> None:
        """A single-transaction attempt failed: its finished steps were undone with it."""
        self._pending.clear()
        if self.applied:
            log(
                "warning",
                "alembic.migrations.rolled_back",
                revisions=[revision for revision, _ in self.applied],
                will_retry=not final,
                reason="they ran in the same transaction as the step that failed "
                "(transaction_per_migration is off), so the database is back where it started",
            )
        self.applied.clear()
