"""Keeps the demo's expected errors and log events off the terminal: counted, with their hints."""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

OUTSIDE = "outside any request"


@dataclass
class Findings:
    """What the load made the observer and the server say, for the report."""

    events: Counter[str] = field(default_factory=Counter)  # log event name -> count
    # (route, what, hint) -> count: every log event that carries a hint (its fix)
    problems: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    origins: dict[str, Counter[str]] = field(default_factory=dict)  # route -> app lines named
    errors: Counter[str] = field(default_factory=Counter)  # "where: Type: message" -> count

    def collect(self, event_dict: Any) -> None:
        """Count one structlog event; remember its hint and origin by the route it names."""
        event = str(event_dict.get("event", "?"))
        self.events[event] += 1
        hint = event_dict.get("hint")
        if not hint:
            return
        route = str(event_dict.get("route") or OUTSIDE)
        reason = event_dict.get("reason")
        what = f"{event} {reason}" if reason else event
        self.problems[(route, what, str(hint))] += 1
        origin = event_dict.get("origin") or event_dict.get("resumed_at")  # pool.held_idle
        if origin:
            self.origins.setdefault(route, Counter())[str(origin)] += 1


def _summary(where: str, error: BaseException | None, message: str) -> str:
    """One line for an error: where it was logged, its type and its message's first line."""
    if error is None:
        return f"{where}: {message}"
    # SQLAlchemy prefixes the driver's message with "(module.Class) ": the type says it already
    text = re.sub(r"^\([\w.]+\)\s*", "", str(error).strip()).splitlines()
    return f"{where}: {type(error).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


class ErrorTally(logging.Filter):
    """Counts each error a logger reports with a traceback. While ``quiet`` (during the load,
    under the progress bar) nothing is printed; afterwards the record is one line, no
    traceback. Records without an exception (e.g. the server cannot bind its port) pass."""

    def __init__(self, errors: Counter[str]) -> None:
        super().__init__()
        self.errors = errors
        self.quiet = True

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        summary = _summary(record.name, record.exc_info[1], record.getMessage())
        self.errors[summary] += 1
        if self.quiet:
            return False
        record.msg, record.args = f"{record.getMessage()} ({summary})", None
        record.exc_info = record.exc_text = None
        return True


def uvicorn_log_config(tally: ErrorTally) -> dict[str, Any]:
    """uvicorn's own logging set-up, with the app's exceptions going through ``tally``."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"tally": {"()": lambda: tally}}
    config["handlers"]["default"]["filters"] = ["tally"]
    return config


@contextlib.contextmanager
def quiet(findings: Findings, tally: ErrorTally) -> Iterator[None]:
    """Route the library's log events, asyncio's errors, errors in finalizers and SQLAlchemy's
    warnings about collected connections into ``findings`` instead of the terminal."""
    import structlog

    old = structlog.get_config()

    def collect(logger: Any, name: str, event_dict: Any) -> Any:
        findings.collect(event_dict)
        raise structlog.DropEvent

    def unraisable(info: Any) -> None:
        findings.errors[_summary("a finalizer", info.exc_value, str(info.err_msg))] += 1

    structlog.configure(processors=[collect, *old["processors"]])
    asyncio_log, pool_log = logging.getLogger("asyncio"), logging.getLogger("sqlalchemy.pool")
    asyncio_log.addFilter(tally)
    level = pool_log.level
    # The demo leaks on purpose: SQLAlchemy's own warning about each connection the garbage
    # collector reclaims would drown the report, which counts them already.
    pool_log.setLevel(logging.CRITICAL)
    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The garbage collector is trying")
            yield
    finally:
        sys.unraisablehook = hook
        pool_log.setLevel(level)
        asyncio_log.removeFilter(tally)
        structlog.configure(**old)
