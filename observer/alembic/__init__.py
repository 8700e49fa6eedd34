"""Alembic integration: safe, recorded migrations in ``env.py``; schema drift in the app.

In ``env.py``, after ``context.configure(connection=connection, ...)``::

    import observer.alembic

    observer.alembic.run_migrations(connection)

At the app's startup::

    watcher = observer.alembic.watch_schema(engine, script_location="migrations")

See docs/alembic.md.
"""

from __future__ import annotations

from observer.alembic._migrations import run_migrations
from observer.alembic._retry import MigrationError
from observer.alembic._schema_drift import SchemaWatcher, watch_schema
from observer.server._revisions import CodeRevisions, SchemaState

__all__ = [
    "CodeRevisions",
    "MigrationError",
    "SchemaState",
    "SchemaWatcher",
    "run_migrations",
    "watch_schema",
]
