"""pool-observer: see SQLAlchemy connection pools and ORM sessions in production."""

from __future__ import annotations

from observer.core import Observer
from observer.instrument import instrument
from observer.logs import RedactSecrets, configure_logging
from observer.middleware import ObserverMiddleware
from observer.settings import ConfigurationError, Settings

__all__ = [
    "ConfigurationError",
    "Observer",
    "ObserverMiddleware",
    "RedactSecrets",
    "Settings",
    "__version__",
    "configure_logging",
    "instrument",
]

__version__ = "0.1.0.dev0"
