"""Settings of ``observer sidecar``: options over ``OBSERVER_*`` variables, validated."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from observer import _values as values
from observer._environment import unknown_variable
from observer.server._view import (
    ALL_DATABASES,
    APPLICATION_NAME_ENV,
    DEFAULT_APPLICATION_NAME,
    application_name_from_env,
)
from observer.settings import token_problem

DEFAULT_PORT = 9188  # next to postgres_exporter's 9187, so both can run on one host


@dataclass(frozen=True)
class SidecarConfig:
    """Where to listen, which database to poll and where the workers' metric files are."""

    address: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    database_url: str | None = field(default=None, repr=False)  # may carry a password
    application_name: str = DEFAULT_APPLICATION_NAME
    poll_interval: float = 15.0
    statement_timeout_ms: int = 5000
    connect_timeout: float = 5.0
    multiproc_dir: str | None = None
    prune_dead_workers: bool = True
    databases: tuple[str, ...] = ()  # () is the database of database_url; ("*",) every one
    metrics_token: str | None = field(default=None, repr=False)  # a secret, from a file


# option dest -> (flag, environment variable)
OPTIONS: dict[str, tuple[str, str]] = {
    "address": ("--address", "OBSERVER_SIDECAR_ADDRESS"),
    "port": ("--port", "OBSERVER_SIDECAR_PORT"),
    "database_url": ("--database-url", "OBSERVER_SIDECAR_DATABASE_URL"),
    "application_name": ("--application-name", APPLICATION_NAME_ENV),
    "poll_interval": ("--poll-interval", "OBSERVER_SIDECAR_POLL_INTERVAL"),
    "statement_timeout_ms": ("--statement-timeout-ms", "OBSERVER_SIDECAR_STATEMENT_TIMEOUT_MS"),
    "connect_timeout": ("--connect-timeout", "OBSERVER_SIDECAR_CONNECT_TIMEOUT"),
    "multiproc_dir": ("--multiproc-dir", "PROMETHEUS_MULTIPROC_DIR"),
    "prune_dead_workers": ("--prune-dead-workers", "OBSERVER_SIDECAR_PRUNE_DEAD_WORKERS"),
    "databases": ("--databases", "OBSERVER_SIDECAR_DATABASES"),
}
# Secrets come from files (never a command line or an environment value), and fail closed:
# given but empty, unreadable or unusable stops the sidecar.
SECRET_FILES: dict[str, tuple[str, str, str]] = {
    "metrics_token_file": (
        "--metrics-token-file",
        "OBSERVER_SIDECAR_METRICS_TOKEN_FILE",
        "file holding the bearer token /metrics asks for (Authorization: Bearer <token>; at "
        "least 16 characters); /healthz stays open",
    ),
    "database_url_file": (
        "--database-url-file",
        "OBSERVER_SIDECAR_DATABASE_URL_FILE",
        "file holding the database URL, so that its password is on no command line or "
        "environment value (instead of --database-url)",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sidecar's options; each falls back to its environment variable, then a default."""
    d = SidecarConfig()
    helps = {
        "address": f"address to listen on (default {d.address}; 0.0.0.0 in the container)",
        "port": f"port of /metrics and /healthz (default {d.port}; 0 picks a free one)",
        "database_url": "postgresql://user:password@host:port/db to poll pg_stat_activity "
        "(falls back to OBSERVER_DATABASE_URL; leave out for workers' metrics only)",
        "application_name": "application_name of the app's connections "
        f"(default {d.application_name})",
        "poll_interval": f"seconds between polls, {POLL_RANGE[0]:g} to {POLL_RANGE[1]:g} "
        f"(default {d.poll_interval:g})",
        "statement_timeout_ms": "milliseconds the poll's queries may run (statement_timeout), "
        f"at most the poll interval (default {d.statement_timeout_ms} or the interval)",
        "connect_timeout": f"seconds to wait for a connection, {CONNECT_RANGE[0]:g} to "
        f"{CONNECT_RANGE[1]:g} (default {d.connect_timeout:g})",
        "multiproc_dir": "the app workers' PROMETHEUS_MULTIPROC_DIR (default: none, no workers' "
        "metrics)",
        "prune_dead_workers": "mark_process_dead for worker pids that no longer exist, so a "
        "killed worker's gauges leave /metrics (default: on; needs the workers' pid namespace: "
        "same host, or docker compose pid: service:app; --no-prune-dead-workers where the "
        "sidecar cannot see the workers' pids)",
        "databases": "databases of the server view, separated by commas, or '*' for every one "
        "(default: the database of --database-url)",
    }  # fmt: skip
    types = _types()
    for dest, (flag, env) in OPTIONS.items():
        text = f"{helps[dest]} [env {env}]"
        if dest == "prune_dead_workers":
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(flag, dest=dest, default=None, type=types.get(dest, str), help=text)
    _add_secret_files(parser)


def _add_secret_files(parser: argparse.ArgumentParser) -> None:
    for dest, (flag, env, text) in SECRET_FILES.items():
        parser.add_argument(
            flag, dest=dest, default=None, metavar="PATH", help=f"{text} [env {env}]"
        )


POLL_RANGE = (0.1, 3600.0)  # seconds
CONNECT_RANGE = (0.1, 300.0)  # seconds


def _types() -> dict[str, Callable[[str], Any]]:
    """argparse ``type=`` of the options checked on their own (resolve() checks them again,
    with the environment variables, and how the statement timeout fits the interval)."""
    arg = values.argument
    return {
        "address": arg(values.host, "--address"),
        "port": arg(values.whole, "--port", 0, 65535, fix="0 picks a free port"),
        "application_name": arg(values.application_name, "--application-name"),
        "poll_interval": arg(values.decimal, "--poll-interval", *POLL_RANGE, unit="seconds"),
        "statement_timeout_ms": arg(
            values.whole,
            "--statement-timeout-ms",
            1,
            int(POLL_RANGE[1] * 1000),
            unit="milliseconds",
        ),
        "connect_timeout": arg(values.decimal, "--connect-timeout", *CONNECT_RANGE, unit="seconds"),
    }


def _name(dest: str) -> str:
    """``--flag / VARIABLE``: how an error names the setting, which may come from either."""
    flag, env = OPTIONS[dest]
    return f"{flag} / {env}"


def _listener(raw: Mapping[str, str], d: SidecarConfig) -> tuple[str, int]:
    """(address, port) to listen on, both checked before anything binds."""
    address = values.host(raw.get("address", d.address), _name("address"))
    port = values.whole(
        raw.get("port", str(d.port)), _name("port"), 0, 65535, fix="0 picks a free port"
    )
    return address, port


def _connect_timeout(raw: Mapping[str, str], d: SidecarConfig) -> float:
    """Seconds to wait for the database to accept a connection."""
    text = raw.get("connect_timeout", str(d.connect_timeout))
    return values.decimal(text, _name("connect_timeout"), *CONNECT_RANGE, unit="seconds")


def resolve(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    *,
    require_source: bool = True,
) -> SidecarConfig:
    """Options over environment over defaults; raises ValueError naming the option and the fix."""
    env = os.environ if environ is None else environ
    _check_variables(env)
    raw = _raw(args, env)
    token = _secret_files(args, env, raw)
    d = SidecarConfig()
    address, port = _listener(raw, d)
    interval, timeout_ms = _poll_timing(raw, d)
    connect = _connect_timeout(raw, d)
    app_name = values.application_name(
        raw.get("application_name", application_name_from_env(env)), _name("application_name")
    )
    url = _database_url(raw)
    prune = _prune_dead_workers(raw)
    databases = _databases(raw)
    multiproc_dir = raw.get("multiproc_dir")
    if require_source and url is None and multiproc_dir is None:
        raise ValueError(
            "nothing to serve: give --database-url (or OBSERVER_SIDECAR_DATABASE_URL) for the "
            "server view, --multiproc-dir (or PROMETHEUS_MULTIPROC_DIR) for the app's workers, "
            "or both"
        )
    return SidecarConfig(
        address=address,
        port=port,
        database_url=url,
        application_name=app_name,
        poll_interval=interval,
        statement_timeout_ms=timeout_ms,
        connect_timeout=connect,
        multiproc_dir=multiproc_dir,
        prune_dead_workers=prune,
        databases=databases,
        metrics_token=token,
    )


def _raw(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    """The text of each setting given, option first, then its environment variable."""
    raw: dict[str, str] = {}
    for dest, (_, var) in OPTIONS.items():
        value = getattr(args, dest, None)
        if value is None:
            value = env.get(var) or None
        if value is None and dest == "database_url":
            value = env.get("OBSERVER_DATABASE_URL") or None
        if value is not None:
            raw[dest] = str(value)
    return raw


def _check_variables(env: Mapping[str, str]) -> None:
    """A misspelled ``OBSERVER_SIDECAR_*`` variable stops the sidecar (it would be ignored)."""
    known = [var for _, var in OPTIONS.values()] + [var for _, var, _ in SECRET_FILES.values()]
    sidecar = [var for var in known if var.startswith("OBSERVER_SIDECAR_")]
    problem = unknown_variable(env, sidecar, prefix="OBSERVER_SIDECAR_", owner="the sidecar")
    if problem is not None:
        raise ValueError(problem)


def _secret_files(
    args: argparse.Namespace, env: Mapping[str, str], raw: dict[str, str]
) -> str | None:
    """The metrics token read from its file (or ``None``); the database URL read from its file
    goes into ``raw``. A file given but missing, unreadable or empty is an error."""
    texts = {}
    for dest, (flag, var, _) in SECRET_FILES.items():
        path = getattr(args, dest, None)
        if path is None:
            path = env.get(var)  # set but empty is an error, not "unset": it fails closed
        if path is not None:
            texts[dest] = _read_secret(path, f"{flag} / {var}")
    if "database_url_file" in texts:
        explicit = getattr(args, "database_url", None) or env.get(OPTIONS["database_url"][1])
        if explicit:
            raise ValueError(
                "give the database URL once: --database-url-file / "
                "OBSERVER_SIDECAR_DATABASE_URL_FILE or --database-url / "
                "OBSERVER_SIDECAR_DATABASE_URL, not both"
            )
        raw["database_url"] = texts["database_url_file"]
    token = texts.get("metrics_token_file")
    if token is not None and (problem := token_problem(token)) is not None:
        # never the token itself: what is wrong with it
        raise ValueError(
            f"--metrics-token-file / OBSERVER_SIDECAR_METRICS_TOKEN_FILE: the token {problem}"
        )
    return token


def _read_secret(path: str, option: str) -> str:
    """The content of a secret file, without surrounding whitespace (a trailing newline)."""
    if not path.strip():
        raise ValueError(f"{option} is given but empty: name the file, or leave the option out")
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"{option}: cannot read {path!r}: {reason}") from None
    if not text:
        raise ValueError(f"{option}: {path!r} is empty")
    return text


def _poll_timing(raw: Mapping[str, str], d: SidecarConfig) -> tuple[float, int]:
    """(poll interval in seconds, statement timeout in ms): a poll must end before the next."""
    interval = values.decimal(
        raw.get("poll_interval", str(d.poll_interval)), _name("poll_interval"), *POLL_RANGE,
        unit="seconds", fix="it is how often the sidecar reads pg_stat_activity",
    )  # fmt: skip
    longest = int(interval * 1000)
    timeout_ms = values.whole(
        raw.get("statement_timeout_ms", str(min(d.statement_timeout_ms, longest))),
        _name("statement_timeout_ms"), 1, longest, unit="milliseconds",
        fix="at most the poll interval, so that a slow poll ends before the next one",
    )  # fmt: skip
    return interval, timeout_ms


def _database_url(raw: Mapping[str, str]) -> str | None:
    """The database URL given, if any, once it is known to be a PostgreSQL one."""
    url = raw.get("database_url")
    if url is None:
        return None
    backend = values.database_url(url, _name("database_url")).get_backend_name()
    if backend not in {"postgresql", "postgres"}:
        raise ValueError(
            f"{_name('database_url')} must be a PostgreSQL URL "
            f"(got a {backend!r} one): the sidecar polls pg_stat_activity"
        )
    return url


def _prune_dead_workers(raw: Mapping[str, str]) -> bool:
    """The pruning switch, from an option (a bool) or its variable (true/false, 1/0, yes/no)."""
    prune = raw.get("prune_dead_workers", "true").lower()
    if prune not in {"1", "true", "yes", "0", "false", "no"}:
        raise ValueError(
            "OBSERVER_SIDECAR_PRUNE_DEAD_WORKERS must be true or false "
            f"(got {raw['prune_dead_workers']!r})"
        )
    return prune in {"1", "true", "yes"}


def _databases(raw: Mapping[str, str]) -> tuple[str, ...]:
    """The databases the server view covers: names, ``*`` alone for all, () for the URL's."""
    text = raw.get("databases")
    if text is None:
        return ()
    names = tuple(name.strip() for name in text.split(","))
    # PostgreSQL truncates names at 63 bytes: a longer one would never match
    if not all(0 < len(name.encode()) <= 63 for name in names) or (
        ALL_DATABASES in names and len(names) > 1
    ):
        raise ValueError(
            f"{_name('databases')} must be database names separated by commas, or "
            f"'{ALL_DATABASES}' for every database (got {text!r})"
        )
    return names
