"""Doctor from Python: check an engine's pool against the server it connects to."""

from __future__ import annotations

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from observer.doctor._pool_checks import (
    DEFAULT_REQUEST_TIMEOUT,
    Deployment,
    PoolSettings,
    pool_settings_of,
)
from observer.doctor._report import Report, build_report
from observer.server._revisions import (
    DEFAULT_VERSION_TABLE,
    CodeRevisions,
    read_revisions,
    read_revisions_sync,
)
from observer.server._view import (
    application_name_from_env,
    read_activity,
    read_activity_sync,
    read_settings,
    read_settings_sync,
)
from observer.settings import ConfigurationError


async def check_engine(
    engine: AsyncEngine,
    *,
    workers: int = 1,
    replicas: int = 1,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    network_idle_timeout: float | None = None,
    application_name: str | None = None,
    pool: PoolSettings | None = None,
    alembic: CodeRevisions | None = None,
    version_table: str = DEFAULT_VERSION_TABLE,
) -> Report:
    """Check an AsyncEngine's pool against its server; uses one connection from the engine.

    ``pool`` overrides the settings read from the engine's pool (the command line describes
    a pool it does not have). With ``alembic`` (the app's script directory), the database's
    Alembic revision is compared with the code's head too.
    """
    if not isinstance(engine, AsyncEngine):
        raise ConfigurationError(
            f"check_engine() needs an AsyncEngine (got {type(engine).__name__}); for a sync "
            "Engine call check_sync_engine(engine)"
        )
    deployment = Deployment(workers, replicas, request_timeout, network_idle_timeout)
    settings = pool if pool is not None else pool_settings_of(engine.sync_engine.pool)
    async with engine.connect() as conn:
        server = await read_settings(conn)
        activity = await read_activity(conn, application_name or application_name_from_env())
        schema = None
        if alembic is not None:
            revisions = await read_revisions(conn, version_table=version_table)
            schema = alembic.compare(engine.url.database or "", revisions)
        await conn.rollback()
    return build_report(engine.url, settings, deployment, server, activity, schema)


def check_sync_engine(
    engine: Engine,
    *,
    workers: int = 1,
    replicas: int = 1,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    network_idle_timeout: float | None = None,
    application_name: str | None = None,
    alembic: CodeRevisions | None = None,
    version_table: str = DEFAULT_VERSION_TABLE,
) -> Report:
    """Check a sync Engine's pool against its server; uses one connection from the engine."""
    if not isinstance(engine, Engine):
        raise ConfigurationError(
            f"check_sync_engine() needs a sync Engine (got {type(engine).__name__}); for an "
            "AsyncEngine use: await check_engine(engine)"
        )
    deployment = Deployment(workers, replicas, request_timeout, network_idle_timeout)
    settings = pool_settings_of(engine.pool)
    with engine.connect() as conn:
        server = read_settings_sync(conn)
        activity = read_activity_sync(conn, application_name or application_name_from_env())
        schema = None
        if alembic is not None:
            revisions = read_revisions_sync(conn, version_table=version_table)
            schema = alembic.compare(engine.url.database or "", revisions)
        conn.rollback()
    return build_report(engine.url, settings, deployment, server, activity, schema)
