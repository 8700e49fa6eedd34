"""The sync ``Engine`` behind what the app passes in (an ``Engine`` or an ``AsyncEngine``)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from observer.settings import ConfigurationError

__all__ = ["sync_engine_of"]


def sync_engine_of(engine: object) -> Engine:
    """The sync :class:`Engine` behind ``engine`` (an ``Engine`` or an ``AsyncEngine``)."""
    if isinstance(engine, Engine):
        return engine
    sync = getattr(engine, "sync_engine", None)
    if isinstance(sync, Engine):
        return sync
    raise ConfigurationError(
        f"expected a SQLAlchemy Engine or AsyncEngine, got {type(engine).__name__}; pass the "
        "object returned by create_engine() or create_async_engine() (not a session, a "
        "sessionmaker or a URL)"
    )
