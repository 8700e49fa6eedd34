"""Run Alembic migrations from env.py with lock_timeout set, recording every revision applied."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.engine import Connection

from observer._dsn import display_database
from observer._logs import logger
from observer.alembic._metrics import Publisher, metrics_for
from observer.alembic._options import MigrationOptions
from observer.alembic._recorder import MigrationRecorder
from observer.settings import ConfigurationError


def _database(connection: Connection) -> str:
    return display_database(connection.engine.url)


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
            context.run_migrations(**run_args)
    except BaseException as exc:
        recorder.failed(exc, rolled_back=transactional and not per_migration)
        raise
    finally:
        if steps_fn is not None:
            migration_context._migrations_fn = steps_fn
        _restore_timeouts(connection, previous)
        recorder.end()
