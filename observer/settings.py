"""Options: keyword arguments and ``OBSERVER_*`` environment variables, validated at startup."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypedDict, get_args, get_type_hints

from observer._environment import unknown_variable
from observer._values import DECIMAL, WHOLE, describe, in_range, plain, valid_host

ENV_PREFIX = "OBSERVER_"
OTEL_SERVICE_NAME = "OTEL_SERVICE_NAME"  # the app's own name, when it has one for OpenTelemetry
MIN_TOKEN_LENGTH = 16


class ConfigurationError(ValueError):
    """An option has a value the observer cannot work with; the message says how to fix it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every option of an :class:`~observer.Observer`, with its default.

    Each field can be given as a keyword argument to :func:`observer.instrument` or
    :class:`observer.Observer`, or as the environment variable ``OBSERVER_<FIELD>`` (upper case).
    Keyword arguments win over the environment.
    """

    metrics_path: str | None = "/metrics"
    """Path where the middleware serves Prometheus metrics; ``None`` serves none."""

    leak_threshold_seconds: float = 30.0
    """A session holding a transaction longer than this is reported as a ``too_old`` leak
    (0.01 to 86400 seconds)."""

    sweep_interval_seconds: float = 1.0
    """How often the background sweeper checks for old sessions and flushes deferred events
    (0.01 to 3600 seconds: more often would keep a core busy while the app is idle)."""

    capture_origin: bool = True
    """Record the code location that opened each session (a few microseconds per session)."""

    application_name: str | None = None
    """``application_name`` set on new PostgreSQL connections that do not set their own (in the
    URL query, ``connect_args`` or asyncpg's ``server_settings``), so the server's
    ``pg_stat_activity`` can be joined with the app's view. ``None``: the app's own name where
    one is known (``OTEL_SERVICE_NAME``, else the ``title`` of the FastAPI app given to
    ``instrument()``), else none; empty: never set one. Printable ASCII of at most 63 bytes:
    PostgreSQL rewrites other characters and cuts longer names, and a NUL byte fails every
    connection."""

    max_routes: int = 200
    """Most distinct route label values; further routes are counted as ``other``."""

    max_origins: int = 100
    """Most distinct code lines (``origin`` label) of the leak origins metric; then ``other``."""

    live_page_path: str | None = None
    """Path of the live page (e.g. ``/observer``): pools, checked-out connections (executing or
    idle) and open sessions with age, route and origin, refreshing every 2 s;
    ``<path>/snapshot.json`` is ``snapshot()`` as JSON; ``None``: off. A path of its own (not ``/``,
    not ``metrics_path``, no ``..``). It shows routes and code locations: serve it only where
    /metrics would be acceptable too. Both ask for ``metrics_token`` when one is set:
    ``Authorization: Bearer <token>`` (``curl -H``), or in a browser ``<path>?token=<token>`` (the
    page then sends it as the header and drops it from the address bar)."""

    request_end_grace_seconds: float = 1.0
    """How long after a response ended a session the request opened may still hold its
    transaction before it is a ``request_end`` leak. FastAPI >= 0.118 closes ``yield``
    dependencies after the response is sent: measured 0.8-9.6 ms median, 161 ms worst case on
    2 cores (``bench/grace_period.py``, docs/logging.md); the default leaves a 6x margin."""

    server_timing: bool = True
    """Add a ``Server-Timing: db-wait;dur=..., db-hold;dur=...`` header (milliseconds) to the
    response of every HTTP request that used the pool, so browser devtools show the request's
    pool wait and connection hold."""

    log_requests: bool = False
    """Log a ``request.end`` event (route, status, DB wait and hold) for every HTTP request."""

    slow_checkout_seconds: float | None = 1.0
    """A checkout that waited longer than this logs ``pool.slow_checkout`` (0.001 to 3600
    seconds); ``None``: off."""

    idle_gap_log_seconds: float | None = 1.0
    """A checkout with no statement running longer than this logs ``pool.held_idle``; None: off."""

    tracing: bool = False
    """OpenTelemetry: query spans on the watched engines (with
    opentelemetry-instrumentation-sqlalchemy), pool wait/hold events on the current span and
    trace-id exemplars on the histograms. Needs the ``otel`` extra."""

    metrics_token: str | None = dataclasses.field(default=None, repr=False)  # a secret
    """Bearer token every metrics request must carry (``Authorization: Bearer <token>``), on
    ``metrics_path`` and on ``metrics_port``, else 401; never shown in ``repr`` or logs;
    ``None``: no token asked. At least 16 printable ASCII characters without spaces; an empty
    ``OBSERVER_METRICS_TOKEN`` (or ``none``, ``off``) is an error: unset it to serve without."""

    metrics_port: int | None = None
    """Also serve the metrics on this port, from a thread (off the app's event loop and its
    public port); ``0`` picks a free port; ``None``: no separate port. A port another process
    already listens on is a ``ConfigurationError`` (unless both opted in to
    ``metrics_port_shared``). Each connection must send its request within a few seconds, and
    at most 16 are served at once (more wait, then get a 503)."""

    metrics_host: str = "127.0.0.1"
    """Address ``metrics_port`` listens on (``0.0.0.0`` to be scraped from other hosts)."""

    metrics_port_shared: bool = False
    """Let the workers of one multi-process server (``PROMETHEUS_MULTIPROC_DIR``) all bind
    ``metrics_port`` (``SO_REUSEPORT``): the kernel spreads scrapes over them and any of them
    serves the sum of all workers. A trust boundary: any process of the same OS user that also
    sets ``SO_REUSEPORT`` can then bind the port too, receive scrapes and read their bearer
    tokens; only opt in where every process of that user is trusted. Off: a second bind fails."""

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, object] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Settings from keyword options over ``OBSERVER_*`` environment variables over defaults."""
        options = dict(options or {})
        names = [field.name for field in dataclasses.fields(cls)]
        for key in options:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ConfigurationError(
                    f"unknown option {key!r}{suggestion} (known options: {', '.join(names)})"
                )
        environ = os.environ if environ is None else environ
        _check_environment(environ, names)
        hints = get_type_hints(cls)
        values: dict[str, object] = {}
        for name in names:
            env_name = ENV_PREFIX + name.upper()
            if name in options:
                values[name] = options[name]
            elif env_name in environ and name == "metrics_token":
                values[name] = _token_from_env(env_name, environ[env_name])
            elif env_name in environ:
                values[name] = _parse_env(env_name, environ[env_name], hints[name])
        return cls(**values)  # type: ignore[arg-type]


class Options(TypedDict, total=False):
    """Keyword options of :func:`observer.instrument` and :class:`observer.Observer`."""

    metrics_path: str | None
    leak_threshold_seconds: float
    sweep_interval_seconds: float
    capture_origin: bool
    application_name: str | None
    max_routes: int
    max_origins: int
    live_page_path: str | None
    request_end_grace_seconds: float
    server_timing: bool
    log_requests: bool
    slow_checkout_seconds: float | None
    idle_gap_log_seconds: float | None
    tracing: bool
    metrics_token: str | None
    metrics_port: int | None
    metrics_host: str
    metrics_port_shared: bool


def _check_environment(environ: Mapping[str, str], names: list[str]) -> None:
    """A misspelled ``OBSERVER_*`` variable is an error, not an option silently left out."""
    known = [ENV_PREFIX + name.upper() for name in names]
    problem = unknown_variable(environ, known, owner="the library")
    if problem is not None:
        raise ConfigurationError(problem)


def _token_from_env(env_name: str, raw: str) -> str:
    """The token as given: no value turns auth off (only an unset variable does)."""
    if raw.strip() == "" or raw.strip().lower() in {"none", "off", "false", "0", "no"}:
        # An empty value is what an unset shell variable expands to: failing open there would
        # serve the metrics to anyone.
        raise ConfigurationError(
            f"{env_name} is set to {'an empty value' if not raw.strip() else repr(raw)}: unset "
            "the variable to disable auth, or set it to the token"
        )
    problem = token_problem(raw)
    if problem is not None:
        raise ConfigurationError(f"{env_name} {problem}")
    return raw


def token_problem(token: object) -> str | None:
    """Why ``token`` cannot be a bearer token (a sentence without its value), or ``None``."""
    if not isinstance(token, str):
        return f"must be a string (got a {type(token).__name__})"
    if not token:
        return "is empty"
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        return (
            f"holds whitespace, control or non-ASCII characters (length {len(token)}); a token "
            "is printable ASCII"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        return (
            f"has {len(token)} characters, fewer than {MIN_TOKEN_LENGTH}: use a random one, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return None


def _parse_env(env_name: str, raw: str, hint: object) -> object:
    text = raw.strip()
    optional = "None" in str(hint)
    if optional and hint != str | None:
        hint = next(arg for arg in get_args(hint) if arg is not type(None))
    if optional and text.lower() in {"", "none", "off"}:
        return None
    args = [arg for arg in get_args(hint) if arg is not type(None)]
    if len(args) == 1:  # ``float | None``: parse as float
        hint = args[0]
    if hint is bool:
        lowered = text.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ConfigurationError(f"{env_name} must be true or false (got {raw!r})")
    if hint is float or hint is int:  # an option that may be None also reads "off"
        kind = "a number of seconds" if hint is float else "a whole number"
        return _env_number(env_name, raw, DECIMAL if hint is float else WHOLE, kind, optional)
    return text


def _env_number(env_name: str, raw: str, pattern: re.Pattern[str], kind: str, off: bool) -> float:
    """A number in ASCII digits (``int()``, ``float()`` also read other digits, 'inf', 'nan')."""
    if not pattern.fullmatch(raw.strip()):
        kind += " in ASCII digits" + (", or off" if off else "")
        raise ConfigurationError(f"{env_name} must be {kind} (got {raw!r})")
    return (int if pattern is WHOLE else float)(raw)


# RFC 3986 path characters but '%' (the ASGI path is decoded) and '?' or '#' (never in a path).
_PATH = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]+)+", re.ASCII)


def _check_paths(settings: Settings) -> None:
    for option in ("metrics_path", "live_page_path"):
        path = getattr(settings, option)
        if path is None:
            continue
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(
                f"{option} must be a path starting with '/' (got {path!r}); use None to serve "
                "nothing there"
            )
        if not _PATH.fullmatch(path) or {".", ".."} & set(path.split("/")):
            raise ConfigurationError(
                f"{option} must be a path of its own such as /observer, without '..', spaces, "
                f"'%', '?', '#', a trailing '/' or control characters (got {path!r}); '/' would "
                "take the app's own routes"
            )
    if settings.metrics_path is not None and settings.metrics_path == settings.live_page_path:
        raise ConfigurationError(
            "live_page_path and metrics_path must differ (both are "
            f"{settings.metrics_path!r}); the live page could be /observer"
        )


_SECONDS = {  # option -> (lowest, highest seconds, what it is); NaN, inf never in range
    "leak_threshold_seconds": (
        0.01, 86400, "it is how long a session may hold a transaction before it is reported"
    ),
    "sweep_interval_seconds": (
        0.01, 3600, "it is how often the background sweeper runs: more often keeps a core busy"
    ),
    "request_end_grace_seconds": (
        0, 60, "it is how long a session may stay open after its response ended before it is a "
        "request_end leak"
    ),
    "slow_checkout_seconds": (
        0.001, 3600, "a checkout that waits longer is logged as pool.slow_checkout; None: off"
    ),
    "idle_gap_log_seconds": (0.001, 3600, "a longer idle gap logs pool.held_idle; None: off"),
}  # fmt: skip
_OFF_WHEN_NONE = ("slow_checkout_seconds", "idle_gap_log_seconds")


def _check_seconds(settings: Settings) -> None:
    for name, (low, high, meaning) in _SECONDS.items():
        value = getattr(settings, name)
        if (value is not None or name not in _OFF_WHEN_NONE) and not in_range(value, low, high):
            raise ConfigurationError(
                f"{name} must be {describe(low, high, unit='seconds')} (got {value!r}); {meaning}"
            )


_FLAGS = ("capture_origin", "server_timing", "log_requests", "tracing", "metrics_port_shared")


def _check_flags(settings: Settings) -> None:
    for name in _FLAGS:
        value = getattr(settings, name)
        if not isinstance(value, bool):
            raise ConfigurationError(f"{name} must be True or False (got {value!r})")


def app_name_or_none(name: object) -> str | None:
    """``name`` when PostgreSQL would keep it as an ``application_name`` (a name the app has
    elsewhere, such as ``OTEL_SERVICE_NAME``), else None: such a name is never an error."""
    if isinstance(name, str) and name and plain(name) and len(name) <= 63:
        return name
    return None


def connection_app_name(settings: Settings, environ: Mapping[str, str] | None = None) -> str | None:
    """The ``application_name`` for new connections: the option, else the app's own name
    (``OTEL_SERVICE_NAME``), never the tool's; None: set none."""
    if settings.application_name is not None:
        return settings.application_name or None
    env = os.environ if environ is None else environ
    return app_name_or_none(env.get(OTEL_SERVICE_NAME))


def _check_application_name(settings: Settings) -> None:
    app_name = settings.application_name
    if app_name is not None and (not plain(app_name) or len(app_name) > 63):
        raise ConfigurationError(
            "application_name must be printable ASCII of at most 63 bytes, PostgreSQL's limit "
            f"(got {app_name!r}): PostgreSQL rewrites other characters and a NUL byte fails "
            "every connection; use None to leave connections' application_name alone"
        )


_BOUNDS = {  # option -> what it bounds (a whole number from 1 to 10000)
    "max_routes": "the route label (each route adds series to several metrics)",
    "max_origins": "the origin label (each code line adds a series per leak reason)",
}


def _check_bounds(settings: Settings) -> None:
    for name, bounds in _BOUNDS.items():
        value = getattr(settings, name)
        if not in_range(value, 1, 10000, whole=True):
            raise ConfigurationError(
                f"{name} must be a whole number >= 1 and <= 10000 (got {value!r}); it bounds "
                f"{bounds}; further values are counted as 'other'"
            )


def _check_metrics_token(settings: Settings) -> None:
    token = settings.metrics_token
    # The token is a secret: the message says what is wrong with it, never its value.
    problem = None if token is None else token_problem(token)
    if problem is not None:
        raise ConfigurationError(
            f"metrics_token {problem} (at least {MIN_TOKEN_LENGTH} printable ASCII characters, "
            "no spaces); use None to serve metrics without a token"
        )


def _check_metrics_listener(settings: Settings) -> None:
    port = settings.metrics_port
    if port is not None and not in_range(port, 0, 65535, whole=True):
        raise ConfigurationError(
            f"metrics_port must be a port number from 0 to 65535 (got {port!r}); 0 picks a free "
            "port, None serves no separate port"
        )
    host = settings.metrics_host
    if not valid_host(host):
        raise ConfigurationError(
            "metrics_host must be an address to listen on, such as 127.0.0.1, 0.0.0.0 or :: "
            f"(got {host!r})"
        )


# In this order: with several wrong options, the first one listed here is reported.
_CHECKS = (
    _check_paths,
    _check_seconds,
    _check_flags,
    _check_application_name,
    _check_bounds,
    _check_metrics_token,
    _check_metrics_listener,
)


def _validate(settings: Settings) -> None:
    for check in _CHECKS:
        check(settings)
