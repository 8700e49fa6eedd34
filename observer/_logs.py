"""The library's log events, a rate limiter, and the opt-in structlog output setup.

Library code only emits events (:func:`emit`, :data:`logger`); configuring output is the app's
business. Events go through the standard library's ``logging`` (loggers ``observer.<area>``),
so the app's handlers, levels and format apply, unless the app configured structlog, whose
configuration they then follow; :func:`configure_logging` is the opt-in JSON or console output.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer

from observer.attribution._scope import RequestScope, request_now, route_of

# Attributes of every LogRecord: an event's field of the same name stays in the message only.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return json.dumps(text) if not text or any(c in text for c in ' ="\n') else text


# Event area -> the logger of the package that logs it (Python's convention: per module),
# ``observer.<package>``.
_PACKAGES = {"session": "sessions", "pool": "pool", "request": "asgi", "alembic": "alembic"}
_LOGGERS = {area: f"observer.{package}" for area, package in _PACKAGES.items()}


class EventLogger:
    """Logs an event (``logger.warning("session.leak", reason=...)``) through the standard
    library's logging, on the logger of its area (``observer.sessions`` for ``session.*``
    events, ``observer`` for the observer's own): the message is the event and its fields as
    ``key=value`` (``None`` left out), and each field is also an attribute of the record
    (``extra``) for structured formatters. When
    the app configured structlog (``structlog.configure``, :func:`configure_logging`), the
    event goes through structlog's configuration instead, as before."""

    def __init__(self) -> None:
        self._structlog: Any = structlog.get_logger("observer")

    def _log(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if structlog.is_configured():
            getattr(self._structlog, method)(event, **fields)
            return
        std = logging.getLogger(_LOGGERS.get(event.split(".", 1)[0], "observer"))
        if not std.isEnabledFor(level):
            return
        message = " ".join(
            [
                event,
                *(f"{key}={_text(value)}" for key, value in fields.items() if value is not None),
            ]
        )
        extra = {k: v for k, v in fields.items() if k not in _RECORD_ATTRIBUTES}
        std.log(level, "%s", message, extra={**extra, "event": event})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, "error", event, fields)


logger = EventLogger()

_CURRENT: Any = object()  # "the request of the current context"


class RateLimiter:
    """Allow at most ``burst`` events per key in each ``window`` seconds; count what it drops."""

    def __init__(self, *, burst: int = 10, window: float = 60.0) -> None:
        self.burst = burst
        self.window = window
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        """Whether an event of ``key`` may be logged now."""
        now = time.monotonic()
        with self._lock:
            start, count = self._windows.get(key, (now, 0))
            if now - start >= self.window:
                start, count = now, 0
            if count >= self.burst:
                self.suppressed[key] = self.suppressed.get(key, 0) + 1
                self._windows[key] = (start, count)
                return False
            self._windows[key] = (start, count + 1)
            return True

    def take_suppressed(self, key: str) -> int:
        """How many events of ``key`` were dropped since the last call."""
        with self._lock:
            return self.suppressed.pop(key, 0)


def current_span_context() -> Any:
    """The OpenTelemetry span context of the current span, or ``None`` (no span, no OTel).

    OpenTelemetry is looked up, never imported: an app that never imported it has no span, and
    importing it would grow every process's heap (and every full garbage collection)."""
    otel_trace = sys.modules.get("opentelemetry.trace")
    if otel_trace is None:
        return None
    context = otel_trace.get_current_span().get_span_context()
    return context if context.is_valid else None


def remember_span(scope: RequestScope) -> None:
    """Keep the current span of ``scope``'s request for log lines emitted later, outside its
    context (a leaked session, a reclaimed connection). Called in the request's context when it
    first checks out a connection or opens a session: every such later line is about one of
    those, and requests that never use the database skip the lookup."""
    scope.span_noted = True
    scope.span_context = current_span_context()


def trace_fields(fallback: Any = None) -> dict[str, str]:
    """``trace_id``/``span_id`` (hex, as OpenTelemetry prints them) of the current span, else of
    ``fallback`` (a span context saved earlier); empty without a span."""
    context = current_span_context() or fallback
    if context is None:
        return {}
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def emit(
    level: str,
    event: str,
    scope: RequestScope | None = _CURRENT,
    /,
    *,
    span: Any = None,
    **fields: Any,
) -> None:
    """Log ``event`` with the request's ``request_id`` and ``route`` and the trace ids.

    ``scope`` is the request the event belongs to (by default the current one); events about
    work that ran in another context (the garbage collector, the sweeper) pass the request
    stamped on the connection or session, so they still name the right request and trace.
    The trace ids are the current span's, else ``span``'s (a span context saved when the event
    happened), else those of the span that was current when the request began.
    """
    if scope is _CURRENT:
        scope = request_now()
    if "route" not in fields:
        fields["route"] = route_of(scope) if scope is not None else None
    if "request_id" not in fields:
        fields["request_id"] = scope.request_id if scope is not None else None
    fields.update(trace_fields(span or (scope.span_context if scope is not None else None)))
    getattr(logger, level)(event, **fields)


# -- the opt-in JSON setup ----------------------------------------------------------------

SECRET_KEYS = re.compile(
    r"pass(word|wd)?|pwd|secret|token|authorization|cookie|dsn|api_?key|credential|param",
    re.IGNORECASE,
)
REDACTED = "[REDACTED]"
# Where a value PostgreSQL or SQLAlchemy quoted ends, when the value itself may hold quotes,
# brackets, parentheses or line breaks: at the next field of the error (psycopg and asyncpg
# put DETAIL, HINT, CONTEXT... on lines of their own), SQLAlchemy's next block, the next
# exception of a printed chain, or the end of the text. A value is never cut short at a
# character it may contain: whatever follows it up to there goes too.
_END = (
    r"(?=\n(?:DETAIL|HINT|CONTEXT|WHERE|STATEMENT|QUERY|LOCATION):  "
    r"|\n\[SQL: |\n\[parameters: |\n\[SQL parameters hidden|\n\(Background on this error at: "
    r"|\n\nThe above exception was |\n\nDuring handling of the above exception|\Z)"
)
_SCRUBS = (
    # user:password@ in URLs and DSNs
    (re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]*:)[^@\s]+@"), r"\1***@"),
    # SQLAlchemy's error text: "[SQL: ...]" (SQL may hold "]" at a line end) and "[parameters:
    # ...]" (a repr: one line); an "[SQL: " left without its usual end goes to the end
    (re.compile(r"\[SQL: .*?\]" + _END, re.DOTALL), "[SQL: REDACTED]"),
    (re.compile(r"\[SQL: (?!REDACTED\]).*?" + _END, re.DOTALL), "[SQL: REDACTED]"),
    (re.compile(r"\[parameters: .*?\](?=\n|\Z)", re.DOTALL), "[parameters: REDACTED]"),
    # asyncpg quotes the bad value: "invalid input for query argument $1: 'ssn-...' (...)"
    (re.compile(r"(query argument \$\d+:).*"), r"\1 REDACTED"),
    # PostgreSQL quotes the bad value without escaping it: 'invalid input syntax for type
    # integer: "abc"', 'invalid input value for enum mood: "x"'; in a longer line, to its end
    (
        re.compile(r'(invalid input (?:syntax|value) for [^:\n]*:) ".*?"' + _END, re.DOTALL),
        r"\1 REDACTED",
    ),
    (re.compile(r'(invalid input (?:syntax|value) for [^:\n]*:) (?!REDACTED)".*'), r"\1 REDACTED"),
    # JSON: 'DETAIL:  Token "x" is invalid.', 'CONTEXT:  JSON data, line 1: x...'
    (re.compile(r'(Token )".*?"( is invalid)', re.DOTALL), r'\1"REDACTED"\2'),
    (re.compile(r"(JSON data, line \d+:).*"), r"\1 REDACTED"),
    # 'DETAIL:  Failing row contains (...)': every column of the row, any character
    (re.compile(r"(Failing row contains )\(.*?" + _END, re.DOTALL), r"\1(REDACTED)"),
    # 'Key (email)=(x) already exists' (also "is not present in table", "is duplicated",
    # "conflicts with existing key (...)=(...)"): the value may hold ")" and line breaks
    (
        re.compile(
            r"(Key \(.*?\))=\(.*\)"
            r"(?= already exists| is not present in table| is duplicated| conflicts with)"
        ),
        r"\1=(REDACTED)",
    ),
    (
        re.compile(r"((?:Key|existing key) \(.*?\))=\((?!REDACTED\)).*?" + _END, re.DOTALL),
        r"\1=(REDACTED)",
    ),
    # 'CONTEXT:  unnamed portal parameter $1 = '...'' (log_parameter_max_length_on_error > 0)
    (
        re.compile(r"(portal (?:\"[^\"\n]*\" )?parameter \$\d+ = ).*?" + _END, re.DOTALL),
        r"\1REDACTED",
    ),
)


def scrub(text: str) -> str:
    """``text`` without URL passwords, SQL text, SQL parameters or the values PostgreSQL quotes
    in its errors (bad input, failing rows, duplicate keys, JSON tokens)."""
    for pattern, replacement in _SCRUBS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets:
    """A structlog processor: values of secret-looking keys become ``[REDACTED]``; strings
    (exception messages and tracebacks included) lose passwords, SQL text and parameters.

    Run it after the exception renderer, so the rendered traceback is scrubbed too.
    """

    def __init__(self, *, keys: re.Pattern[str] = SECRET_KEYS, max_depth: int = 6) -> None:
        self.keys = keys
        self.max_depth = max_depth

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event_dict.items()):
            event_dict[key] = self._clean(key, value, 0)
        return event_dict

    def _clean(self, key: object, value: Any, depth: int) -> Any:
        if isinstance(key, str) and self.keys.search(key) and value is not None:
            return REDACTED
        if isinstance(value, str):
            return scrub(value)
        if depth >= self.max_depth:
            return value
        if isinstance(value, dict):
            return {k: self._clean(k, v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(None, v, depth + 1) for v in value]
        return value


def add_trace_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor: ``trace_id``/``span_id`` of the current OpenTelemetry span."""
    if "trace_id" not in event_dict:
        event_dict.update(trace_fields())
    return event_dict


def configure_logging(
    *,
    level: str = "info",
    stream: TextIO | None = None,
    renderer: Literal["json", "console"] = "json",
) -> None:
    """Opt-in: configure structlog to write one JSON object per line to ``stream`` (stdout), or
    with ``renderer="console"`` structlog's readable console lines.

    Every line gets a timestamp, the level, the current OpenTelemetry trace and span ids, and
    passes :class:`RedactSecrets`; exceptions are rendered as dicts **without local
    variables** (structlog's ``dict_tracebacks`` shows locals, which leaks passwords and SQL
    parameters into logs). This replaces the global structlog configuration: call it once, at
    startup, and only if the app does not configure structlog itself. Without it the events
    go through the standard library's ``logging`` (docs/logging.md).
    """
    levels = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
    if level not in levels:
        from observer.settings import ConfigurationError

        raise ConfigurationError(f"level must be one of {', '.join(levels)} (got {level!r})")
    if renderer not in ("json", "console"):
        from observer.settings import ConfigurationError

        raise ConfigurationError(f"renderer must be 'json' or 'console' (got {renderer!r})")
    output: Any = (
        structlog.processors.JSONRenderer()
        if renderer == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_trace_context,
            ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            RedactSecrets(),
            output,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(levels[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
