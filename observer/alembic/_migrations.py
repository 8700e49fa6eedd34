"""Run Alembic migrations from env.py: short lock waits, retried, each revision recorded."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.engine import Connection

from observer._dsn import display_database
from observer.alembic._blockers import BlockerWatch, poll_interval
from observer.alembic._log import log
from observer.alembic._metrics import Publisher, metrics_for
from observer.alembic._options import ENV, MigrationOptions
from observer.alembic._recorder import MigrationRecorder, classify
from observer.alembic._retry import Backoff, MigrationError
from observer.settings import ConfigurationError


@dataclass
class _Session:
    """The migration connection's backend pid and the settings to put back afterwards."""

    pid: int | None
    previous: dict[str, str]


def _database(connection: Connection) -> str:
    return display_database(connection.engine.url)


def _prepare(connection: Connection, options: MigrationOptions) -> _Session:
    """SET the timeouts for the session; note the backend's pid and the previous values.

    Session-level (not SET LOCAL): it holds across Alembic's transactions, whether one for the
    whole run, one per migration (transaction_per_migration) or none (autocommit_block), and
    across retries.
    """
    wanted = {
        name: seconds
        for name, seconds in (
            ("lock_timeout", options.lock_timeout),
            ("statement_timeout", options.statement_timeout),
        )
        if seconds
    }
    if connection.dialect.name != "postgresql":
        return _Session(None, {})
    ours = not connection.in_transaction()
    pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
    previous: dict[str, str] = {}
    for name, seconds in wanted.items():
        previous[name] = str(connection.execute(text(f"SHOW {name}")).scalar())
        connection.execute(
            text("SELECT set_config(:name, :value, false)"),
            {"name": name, "value": f"{max(1, round(seconds * 1000))}ms"},
        )
    if ours:  # a SET inside a transaction that is rolled back is undone: commit it now
        connection.commit()
    return _Session(int(pid) if pid is not None else None, previous)


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
        log(
            "warning",
            "alembic.timeouts_not_restored",
            settings=sorted(previous),
            error=type(exc).__name__,
        )


def run_migrations(
    connection: Connection | None = None,
    *,
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
    max_attempts: int | None = None,
    retry_for: float | None = None,
    textfile: str | None = None,
    pushgateway: str | None = None,
    registry: CollectorRegistry | None = None,
    context: Any = None,
    run_args: Mapping[str, Any] | None = None,
) -> None:
    """Run the migrations Alembic was asked for with short lock waits, retried; record each.

    Call it in ``env.py`` after ``context.configure(connection=connection, ...)``, in place of
    ``with context.begin_transaction(): context.run_migrations()``. It sets ``lock_timeout``
    (default 1 s) and, if asked, ``statement_timeout`` on the migration's connection for the
    session, and runs the migrations as Alembic would. A revision that gives up on a lock is
    run again from the start of its transaction after a pause (exponential backoff with
    jitter), up to ``max_attempts`` (10) within ``retry_for`` seconds (60); meanwhile a second
    connection notes who blocks it, and each attempt that gives up logs one line naming the
    table and the blocking backend. Each revision step is logged
    (``alembic.migration.started`` / ``.finished``, ``.lock_timeout``, ``.statement_timeout``,
    ``.failed``) and counted in the ``alembic_migration_*`` metrics, which are written to
    ``textfile`` (node_exporter's textfile collector) and/or pushed to ``pushgateway``, added
    to what earlier runs left there. The settings are restored at the end.

    Every option also reads ``OBSERVER_ALEMBIC_<OPTION>``, which wins over the keyword (an
    operator tunes a deploy without a code change; a replaced keyword is logged as
    ``alembic.option_overridden``). Timeouts of 0 leave the server's setting alone.

    ``registry`` defaults to a fresh one per run (the process is short); pass the app's
    registry when migrations run inside the app. ``context`` defaults to ``alembic.context``;
    ``run_args`` go to ``context.run_migrations(**run_args)`` (the multidb template's
    ``engine_name``). A failed migration raises :class:`MigrationError` (an Alembic
    ``CommandError``: ``alembic`` prints one ``FAILED:`` line), the original as its cause.
    """
    if context is None:
        from alembic import context as alembic_context

        context = alembic_context
    options = MigrationOptions.resolve(
        lock_timeout=lock_timeout,
        statement_timeout=statement_timeout,
        max_attempts=max_attempts,
        retry_for=retry_for,
        textfile=textfile,
        pushgateway=pushgateway,
    )
    for name, keyword, environment in options.overridden:
        log(
            "warning",
            "alembic.option_overridden",
            option=name,
            keyword=keyword,
            environment=environment,
            variable=ENV[name],
            reason="the environment wins over env.py's keyword",
        )
    try:
        migration_context = context.get_context()
    except (NameError, AttributeError):  # alembic.context: a proxy, set while env.py runs
        raise ConfigurationError(
            "run_migrations() runs inside Alembic's env.py, while an alembic command "
            "(alembic upgrade head, command.upgrade(...)) executes it"
        ) from None
    if context.is_offline_mode():
        _run_offline(context, options, run_args or {})
        return
    connection = connection if connection is not None else migration_context.connection
    if connection is None:
        raise ConfigurationError(
            "run_migrations needs the migration's connection: call "
            "context.configure(connection=connection, ...) first (see docs/alembic.md)"
        )
    registry = CollectorRegistry() if registry is None else registry
    _run_recorded(context, migration_context, connection, options, registry, run_args or {})


def _run_offline(context: Any, options: MigrationOptions, run_args: Mapping[str, Any]) -> None:
    """--sql: the timeouts go into the generated script, nothing runs here to record."""
    for name in ("lock_timeout", "statement_timeout"):
        seconds = getattr(options, name)
        if seconds:
            context.execute(f"SET {name} = '{max(1, round(seconds * 1000))}ms'")
    with context.begin_transaction():
        context.run_migrations(**run_args)


def _run_recorded(
    context: Any,
    migration_context: Any,
    connection: Connection,
    options: MigrationOptions,
    registry: CollectorRegistry,
    run_args: Mapping[str, Any],
) -> None:
    """Run the migrations on ``connection`` with the timeouts set, recording each step."""
    database = _database(connection)
    publisher = Publisher(
        registry,
        textfile=options.textfile,
        pushgateway=options.pushgateway,
        job=options.pushgateway_job,
        grouping_key={"database": database} if database else {},
    )
    metrics = metrics_for(registry)  # registered first: the history is read by family name
    publisher.load_history()
    per_migration = bool(migration_context.opts.get("transaction_per_migration"))
    recorder = MigrationRecorder(metrics, publisher, options, per_migration=per_migration)
    session = _prepare(connection, options)
    # The step generator the command (upgrade, downgrade, ...) gave Alembic: wrapped, it tells
    # when each revision starts and ends, with no change to what the revision runs.
    steps_fn = getattr(migration_context, "_migrations_fn", None)
    if steps_fn is not None:
        migration_context._migrations_fn = recorder.wrap(steps_fn)
    else:  # a future Alembic without it: run anyway, with the timeouts, unrecorded
        log(
            "warning",
            "alembic.revisions_not_recorded",
            reason="this Alembic version does not expose the migration steps to pool-observer",
        )
    watch = None
    if session.pid is not None:
        watch = BlockerWatch(
            connection.engine.url,
            session.pid,
            is_async=bool(connection.engine.dialect.is_async),
            interval=poll_interval(options.lock_timeout),
        ).start()
    recorder.begin()
    committed = False
    try:
        _attempts(context, migration_context, options, recorder, watch, run_args)
        committed = True
    finally:
        if watch is not None:
            watch.stop()
        if steps_fn is not None:
            migration_context._migrations_fn = steps_fn
        _restore_timeouts(connection, session.previous)
        recorder.end(committed=committed)


def _retryable(migration_context: Any) -> bool:
    """Whether a failed attempt left nothing half done: its transaction was rolled back whole
    (transactional DDL, and the transaction is Alembic's, not one the caller opened)."""
    return bool(migration_context.impl.transactional_ddl) and not getattr(
        migration_context, "_in_external_transaction", False
    )


def _attempts(
    context: Any,
    migration_context: Any,
    options: MigrationOptions,
    recorder: MigrationRecorder,
    watch: BlockerWatch | None,
    run_args: Mapping[str, Any],
) -> None:
    """Attempt the run until it succeeds, fails for another reason than a lock, or the retries
    are used up; each attempt runs what is left of the plan, each revision from its start."""
    backoff = Backoff(options)
    retryable = _retryable(migration_context)
    started = time.monotonic()
    while True:
        if watch is not None:
            watch.take()  # what an earlier attempt saw is not this one's
        try:
            with context.begin_transaction():
                context.run_migrations(**run_args)
            return
        except Exception as exc:
            outcome, _ = classify(exc)
            elapsed = time.monotonic() - started
            delay = None
            if outcome == "lock_timeout" and retryable:
                delay = backoff.delay(recorder.attempt, elapsed)
            wait = watch.take() if watch is not None else None
            attempt = recorder.attempt_failed(exc, wait=wait, retry_in=delay)
            if delay is None:
                raise MigrationError(attempt, attempts=recorder.attempt, elapsed=elapsed) from exc
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: record, then unchanged
            recorder.interrupted(exc)
            raise
        time.sleep(delay)
        recorder.next_attempt()
