"""Run Alembic migrations from env.py with lock_timeout set, recording every revision applied."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.engine import Connection

from observer._logs import logger
from observer.alembic._metrics import MigrationMetrics, Publisher, metrics_for
from observer.settings import ENV_PREFIX, ConfigurationError

DEFAULT_LOCK_TIMEOUT = 5.0
LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired (PostgreSQL errcodes.txt)
QUERY_CANCELED = "57014"  # statement_timeout expired, or pg_cancel_backend
ENV = {
    "lock_timeout": ENV_PREFIX + "ALEMBIC_LOCK_TIMEOUT",
    "statement_timeout": ENV_PREFIX + "ALEMBIC_STATEMENT_TIMEOUT",
    "textfile": ENV_PREFIX + "ALEMBIC_TEXTFILE",
    "pushgateway": ENV_PREFIX + "ALEMBIC_PUSHGATEWAY",
}
_FIND_BLOCKER = (
    "another session holds a conflicting lock on the table: find it with SELECT pid, "
    "pg_blocking_pids(pid), state, left(query, 60) FROM pg_stat_activity WHERE "
    "cardinality(pg_blocking_pids(pid)) > 0; end it or wait for it, then run the migration again"
)


@dataclass(frozen=True, kw_only=True)
class MigrationOptions:
    """What :func:`run_migrations` sets and where it publishes; seconds, 0 meaning "not set"."""

    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    statement_timeout: float = 0.0
    textfile: str | None = None
    pushgateway: str | None = None
    pushgateway_job: str = "alembic"

    def __post_init__(self) -> None:
        for name, meaning in (
            ("lock_timeout", "how long a migration waits for a lock before it gives up"),
            ("statement_timeout", "how long one statement of a migration may run"),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigurationError(
                    f"{name} must be a number of seconds >= 0 (got {value!r}); it is {meaning}, "
                    "0 leaves the server's setting alone"
                )
        if self.pushgateway and not self.pushgateway.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"pushgateway must be an http(s) URL such as http://pushgateway:9091 "
                f"(got {self.pushgateway!r})"
            )

    @classmethod
    def resolve(
        cls,
        *,
        lock_timeout: float | None = None,
        statement_timeout: float | None = None,
        textfile: str | None = None,
        pushgateway: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> MigrationOptions:
        """Keyword arguments over ``OBSERVER_ALEMBIC_*`` environment variables over defaults."""
        env = os.environ if environ is None else environ
        return cls(
            lock_timeout=_seconds(lock_timeout, env, "lock_timeout", DEFAULT_LOCK_TIMEOUT),
            statement_timeout=_seconds(statement_timeout, env, "statement_timeout", 0.0),
            textfile=textfile or env.get(ENV["textfile"]) or None,
            pushgateway=pushgateway or env.get(ENV["pushgateway"]) or None,
        )


def _seconds(value: float | None, env: Mapping[str, str], name: str, default: float) -> float:
    if value is not None:
        return value
    raw = env.get(ENV[name], "").strip()
    if not raw:
        return default
    if raw.lower() in {"off", "none"}:
        return 0.0
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(
            f"{ENV[name]} must be a number of seconds (got {raw!r}); 0 or off leaves the "
            "server's setting alone"
        ) from None


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


def _database(connection: Connection) -> str:
    return connection.engine.url.database or ""


def _apply_timeouts(connection: Connection, options: MigrationOptions) -> dict[str, str]:
    """SET the timeouts for the session; returns the previous values, to restore afterwards.

    Session-level (not SET LOCAL): it holds across Alembic's transactions, whether one for the
    whole run, one per migration (transaction_per_migration) or none (autocommit_block).
    """
    wanted = {
        name: seconds
        for name, seconds in (
            ("lock_timeout", options.lock_timeout),
            ("statement_timeout", options.statement_timeout),
        )
        if seconds
    }
    if not wanted:
        return {}
    ours = not connection.in_transaction()
    previous: dict[str, str] = {}
    for name, seconds in wanted.items():
        previous[name] = str(connection.execute(text(f"SHOW {name}")).scalar())
        connection.execute(
            text("SELECT set_config(:name, :value, false)"),
            {"name": name, "value": f"{max(1, round(seconds * 1000))}ms"},
        )
    if ours:  # a SET inside a transaction that is rolled back is undone: commit it now
        connection.commit()
    return previous


def _restore_timeouts(connection: Connection, previous: dict[str, str]) -> None:
    """Put the session's settings back (the connection may go back to an app's pool)."""
    if not previous or connection.closed or connection.invalidated:
        return
    try:
        ours = not connection.in_transaction()
        for name, value in previous.items():
            connection.execute(
                text("SELECT set_config(:name, :value, false)"), {"name": name, "value": value}
            )
        if ours:
            connection.commit()
    except Exception as exc:  # never hide the migration's own outcome
        logger.warning(
            "alembic.timeouts_not_restored", settings=sorted(previous), error=type(exc).__name__
        )


def run_migrations(
    connection: Connection | None = None,
    *,
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
    textfile: str | None = None,
    pushgateway: str | None = None,
    registry: CollectorRegistry | None = None,
    context: Any = None,
    run_args: Mapping[str, Any] | None = None,
) -> None:
    """Run the migrations Alembic was asked for, with ``lock_timeout`` set; record each revision.

    Call it in ``env.py`` after ``context.configure(connection=connection, ...)``, in place of
    ``with context.begin_transaction(): context.run_migrations()``. It sets ``lock_timeout``
    (default 5 s) and, if asked, ``statement_timeout`` on the migration's connection for the
    session, runs the migrations exactly as Alembic would, then restores both settings. Each
    revision step is logged (``alembic.migration.started`` / ``.finished``, or
    ``.lock_timeout``, ``.statement_timeout``, ``.failed``) and counted in the
    ``alembic_migration_*`` metrics, which are written to ``textfile`` (node_exporter's textfile
    collector) and/or pushed to ``pushgateway`` when given. Timeouts of 0 leave the server's
    setting alone. Every option also reads ``OBSERVER_ALEMBIC_<OPTION>``.

    ``registry`` defaults to a fresh one per run (the process is short); pass the app's
    registry when migrations run inside the app. ``context`` defaults to ``alembic.context``;
    ``run_args`` go to ``context.run_migrations(**run_args)`` (the multidb template's
    ``engine_name``). A failed migration's exception propagates unchanged.
    """
    if context is None:
        from alembic import context as alembic_context

        context = alembic_context
    options = MigrationOptions.resolve(
        lock_timeout=lock_timeout,
        statement_timeout=statement_timeout,
        textfile=textfile,
        pushgateway=pushgateway,
    )
    try:
        migration_context = context.get_context()
    except (NameError, AttributeError):  # alembic.context: a proxy, set while env.py runs
        raise ConfigurationError(
            "run_migrations() runs inside Alembic's env.py, while an alembic command "
            "(alembic upgrade head, command.upgrade(...)) executes it"
        ) from None
    if context.is_offline_mode():
        # --sql: the timeouts go into the generated script, nothing runs here to record.
        for name in ("lock_timeout", "statement_timeout"):
            seconds = getattr(options, name)
            if seconds:
                context.execute(f"SET {name} = '{max(1, round(seconds * 1000))}ms'")
        with context.begin_transaction():
            context.run_migrations(**(run_args or {}))
        return
    connection = connection if connection is not None else migration_context.connection
    if connection is None:
        raise ConfigurationError(
            "run_migrations needs the migration's connection: call "
            "context.configure(connection=connection, ...) first (see docs/alembic.md)"
        )
    registry = CollectorRegistry() if registry is None else registry
    database = _database(connection)
    publisher = Publisher(
        registry,
        textfile=options.textfile,
        pushgateway=options.pushgateway,
        job=options.pushgateway_job,
        grouping_key={"database": database} if database else {},
    )
    recorder = MigrationRecorder(metrics_for(registry), publisher, options)
    per_migration = bool(migration_context.opts.get("transaction_per_migration"))
    transactional = bool(migration_context.impl.transactional_ddl)
    previous = _apply_timeouts(connection, options)
    # The step generator the command (upgrade, downgrade, ...) gave Alembic: wrapped, it tells
    # when each revision starts and ends, with no change to what the revision runs.
    steps_fn = getattr(migration_context, "_migrations_fn", None)
    if steps_fn is not None:
        migration_context._migrations_fn = recorder.wrap(steps_fn)
    else:  # a future Alembic without it: run anyway, with the timeouts, unrecorded
        logger.warning(
            "alembic.revisions_not_recorded",
            reason="this Alembic version does not expose the migration steps to pool-observer",
        )
    recorder.begin()
    try:
        with context.begin_transaction():
            context.run_migrations(**(run_args or {}))
    except BaseException as exc:
        recorder.failed(exc, rolled_back=transactional and not per_migration)
        raise
    finally:
        if steps_fn is not None:
            migration_context._migrations_fn = steps_fn
        _restore_timeouts(connection, previous)
        recorder.end()
