"""Where the migration events go: the app's structlog setup if it made one, else stdlib logging."""

from __future__ import annotations

import json
import logging
from typing import Any

import structlog

from observer._logs import logger as structlog_logger

# `alembic upgrade` configures stdlib logging from alembic.ini (fileConfig in env.py): warnings
# reach its console handler as they are; info lines need a [logger_observer] section.
STDLIB_LOGGER = "observer.alembic"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR
# Attributes of a LogRecord: an `extra` key among them makes logging raise.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def log(level: str, event: str, **fields: Any) -> None:
    """Emit ``event`` with ``fields``.

    Through structlog when the process configured it (``structlog.configure``, which
    ``observer.configure_logging()`` and structlog's stdlib integration call): its processors
    and renderer decide, JSON included. Otherwise through the stdlib logger
    ``observer.alembic``, as one ``event key=value ...`` line, the fields also given as
    ``extra`` for a JSON formatter.
    """
    if structlog.is_configured():
        getattr(structlog_logger, level)(event, **fields)
        return
    # Looked up now, not at import: env.py imports observer.alembic before its fileConfig(),
    # which disables every logger that exists then and is not named in alembic.ini.
    # A second fileConfig() (alembic run twice in one process) disables it all the same: that
    # is the side effect of disable_existing_loggers, not a choice; silence it with a level.
    stdlib = logging.getLogger(STDLIB_LOGGER)
    stdlib.disabled = False
    number = _LEVELS[level]
    if not stdlib.isEnabledFor(number):
        return
    extra = {k: v for k, v in fields.items() if k not in _RESERVED}
    extra["event"] = event
    stdlib.log(number, "%s", line(event, fields), extra=extra)


def line(event: str, fields: dict[str, Any]) -> str:
    """``event key=value ...`` on one line: strings with spaces or quotes JSON-quoted, no Nones."""
    parts = [event]
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        if isinstance(value, float):
            text = f"{value:g}"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        if not text or any(c in text for c in " \"'=\n"):
            text = json.dumps(text)
        parts.append(f"{key}={text}")
    return " ".join(parts)
