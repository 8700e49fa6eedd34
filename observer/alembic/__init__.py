"""Alembic integration: safe, recorded migrations in ``env.py``; schema drift in the app.

In ``env.py``, after ``context.configure(connection=connection, ...)``::

    import observer.alembic

    observer.alembic.run_migrations(connection, lock_timeout=5)

At the app's startup::

    watcher = observer.alembic.watch_schema(engine, script_location="migrations")

See docs/alembic.md.
"""

from __future__ import annotations

from observer.alembic._metrics import MIGRATION_METRICS
from observer.alembic._migrations import MigrationOptions, classify, run_migrations
from observer.alembic._schema_drift import (
    CodeRevisions,
    SchemaState,
    SchemaWatcher,
    check_schema,
    read_revisions,
    read_revisions_sync,
    watch_schema,
)

__all__ = [
    "MIGRATION_METRICS",
    "CodeRevisions",
    "MigrationOptions",
    "SchemaState",
    "SchemaWatcher",
    "check_schema",
    "classify",
    "read_revisions",
    "read_revisions_sync",
    "run_migrations",
    "watch_schema",
]
