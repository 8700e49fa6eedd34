"""pool-observer: see SQLAlchemy connection pools and ORM sessions in production."""

from __future__ import annotations

from observer._instrument import instrument
from observer._logs import RedactSecrets, configure_logging
from observer._observer import Observer
from observer._types import Snapshot
from observer._version import __version__
from observer.asgi._middleware import ObserverMiddleware
from observer.settings import ConfigurationError, Settings

__all__ = [
    "ConfigurationError",
    "Observer",
    "ObserverMiddleware",
    "RedactSecrets",
    "Settings",
    "Snapshot",
    "__version__",
    "configure_logging",
    "instrument",
]
