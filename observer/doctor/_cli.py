"""``observer doctor`` on the command line: its options, then one check and its report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from observer import _values as values
from observer._dsn import display_url, redact
from observer._logs import scrub
from observer.doctor._alembic_config import FAIL_ON, exit_code, with_alembic
from observer.doctor._engine import check_engine
from observer.doctor._pool_checks import (
    DEFAULT_MAX_OVERFLOW,
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    PoolSettings,
)
from observer.doctor._report import EXIT_UNUSABLE, Report, render_text
from observer.doctor._sizing_cli import add_sizing_arguments, run_sizing, usage_problem
from observer.server._revisions import DEFAULT_VERSION_TABLE, CodeRevisions

DATABASE_URL_ENV = "OBSERVER_DATABASE_URL"


def _count(flag: str, low: int, high: int, fix: str = "") -> Callable[[str], int]:
    return values.argument(values.whole, flag, low, high, fix=fix)


def _seconds(flag: str, low: float, high: float, fix: str = "") -> Callable[[str], float]:
    return values.argument(values.decimal, flag, low, high, unit="seconds", fix=fix)


def _existing(kind: str) -> Callable[[str], str]:
    """argparse ``type=``: a path that exists and is a ``kind`` ("file" or "directory")."""

    def parse(text: str) -> str:
        path = Path(text)
        if not (path.is_file() if kind == "file" else path.is_dir()):
            raise argparse.ArgumentTypeError(f"no {kind} at {text!r}")
        return text

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``observer doctor``; the pool options describe the app's pool (doctor cannot
    see it), SQLAlchemy's defaults (assumed, and said so) for those left out."""
    parser.epilog = (
        "exit codes: 0 clean, 1 findings, 2 usage error or database (or Prometheus) unreachable"
    )
    parser.add_argument(
        "database_url", nargs="?", metavar="DATABASE_URL",
        help=f"postgresql[+asyncpg]://user:password@host:port/db (default: ${DATABASE_URL_ENV})",
    )  # fmt: skip
    parser.add_argument(
        "--pool-size", type=_count("--pool-size", 0, 10000), metavar="N",
        help=f"connections the app's pool keeps, per process (default: {DEFAULT_POOL_SIZE}, "
        "SQLAlchemy's, assumed)",
    )  # fmt: skip
    parser.add_argument(
        "--max-overflow", type=_count("--max-overflow", -1, 10000, "-1 for unbounded"), metavar="N",
        help=f"connections the pool may open beyond --pool-size, per process; -1 for unbounded "
        f"(default: {DEFAULT_MAX_OVERFLOW}, SQLAlchemy's, assumed)",
    )  # fmt: skip
    parser.add_argument(
        "--pool-recycle", metavar="SECONDS",
        type=_seconds("--pool-recycle", -1, 86400, "-1 for never"),
        help="seconds after which the pool replaces a connection; -1 for never (default: -1, "
        "SQLAlchemy's, assumed)",
    )  # fmt: skip
    parser.add_argument(
        "--pool-timeout", type=_seconds("--pool-timeout", 0.001, 3600), metavar="SECONDS",
        help="seconds a checkout waits for a free connection before it fails (default: "
        f"{DEFAULT_POOL_TIMEOUT:g}, SQLAlchemy's, assumed)",
    )  # fmt: skip
    parser.add_argument(
        "--pool-pre-ping", action=argparse.BooleanOptionalAction,
        help="whether the pool tests each connection at checkout (default: no, SQLAlchemy's, "
        "assumed)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=_count("--workers", 1, 1024), metavar="N",
        help="processes running the pool in each replica, e.g. uvicorn or gunicorn workers "
        "(default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--replicas", type=_count("--replicas", 1, 10000), metavar="N",
        help="copies of the app (containers, hosts) on the same database (default: 1)",
    )  # fmt: skip
    parser.add_argument(
        "--request-timeout", type=_seconds("--request-timeout", 0.001, 86400), metavar="SECONDS",
        help="seconds a client or proxy waits for a response (default: "
        f"{DEFAULT_REQUEST_TIMEOUT:g}, assumed)",
    )  # fmt: skip
    parser.add_argument(
        "--network-idle-timeout", type=_seconds("--network-idle-timeout", 0.001, 86400),
        metavar="SECONDS",
        help="seconds a load balancer, NAT or firewall between app and database keeps an idle "
        "connection, e.g. 350 for an AWS NLB (default: none in between)",
    )  # fmt: skip
    parser.add_argument(
        "--application-name", type=values.argument(values.application_name, "--application-name"),
        help="application_name of the app's connections, printable ASCII of at most 63 bytes "
        "(default: $OBSERVER_APPLICATION_NAME or pool-observer)",
    )  # fmt: skip
    _alembic_arguments(parser)
    parser.add_argument(
        "--connect-timeout", type=_seconds("--connect-timeout", 0.001, 3600), default=10.0,
        metavar="SECONDS",
        help="seconds to wait for the database's answer; the whole check waits at most twice "
        "that; with --prometheus, the most each of its answers may take (default: %(default)g)",
    )  # fmt: skip
    parser.add_argument(
        "--fail-on", choices=FAIL_ON, default="warning",
        help="the lowest severity of a finding that makes the exit code 1, or 'drift' to fail "
        "on a schema drift only (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_sizing_arguments(parser)


def _alembic_arguments(parser: argparse.ArgumentParser) -> None:
    """Options naming the app's migration scripts, to compare with the database's revision."""
    alembic = parser.add_mutually_exclusive_group()
    alembic.add_argument(
        "--alembic-config", metavar="ALEMBIC_INI", type=_existing("file"),
        help="compare the database's Alembic revision with the head of this alembic.ini's scripts",
    )  # fmt: skip
    alembic.add_argument(
        "--alembic-script-location", metavar="DIR", type=_existing("directory"),
        help="the same, given the directory holding env.py and versions/",
    )  # fmt: skip
    parser.add_argument(
        "--alembic-version-table", default=DEFAULT_VERSION_TABLE, metavar="TABLE",
        type=values.argument(values.identifier, "--alembic-version-table"),
        help="the table Alembic keeps the revision in (default: %(default)s)",
    )  # fmt: skip


def _async_url(raw: str) -> URL:
    url = values.database_url(raw, "DATABASE_URL")
    if url.get_backend_name() not in {"postgresql", "postgres"}:
        raise ValueError(
            f"doctor checks PostgreSQL only (got a {url.get_backend_name()!r} URL); "
            "expected postgresql://user:password@host:port/database"
        )
    return url.set(drivername="postgresql+asyncpg")


def _reason(exc: Exception, raw: str) -> str:
    """The first line of a driver's error, without the DSN's credentials or SQL values."""
    text = scrub(redact(f"{type(exc).__name__}: {exc}", raw))
    return text.splitlines()[0] if text else text


def _pool(args: argparse.Namespace) -> PoolSettings:
    """The pool the options describe, SQLAlchemy's defaults for what they leave out."""
    return PoolSettings(
        pool_size=DEFAULT_POOL_SIZE if args.pool_size is None else args.pool_size,
        max_overflow=DEFAULT_MAX_OVERFLOW if args.max_overflow is None else args.max_overflow,
        pool_recycle=args.pool_recycle if args.pool_recycle and args.pool_recycle > 0 else None,
        pool_timeout=DEFAULT_POOL_TIMEOUT if args.pool_timeout is None else args.pool_timeout,
        pool_pre_ping=bool(args.pool_pre_ping),
    )


def _assumed(args: argparse.Namespace) -> dict[str, str]:
    """option -> ``name: value`` doctor assumed, for each option left out that it judges (the
    pool's are SQLAlchemy's defaults)."""
    defaults = {
        "--pool-size": ("pool_size", f"pool_size: {DEFAULT_POOL_SIZE}"),
        "--max-overflow": ("max_overflow", f"max_overflow: {DEFAULT_MAX_OVERFLOW}"),
        "--pool-recycle": ("pool_recycle", "pool_recycle: never"),
        "--pool-timeout": ("pool_timeout", f"pool_timeout: {DEFAULT_POOL_TIMEOUT:g} s"),
        "--pool-pre-ping": ("pool_pre_ping", "pool_pre_ping: no"),
        "--request-timeout": ("request_timeout", f"request timeout: {DEFAULT_REQUEST_TIMEOUT:g} s"),
    }
    return {
        option: text for option, (dest, text) in defaults.items() if getattr(args, dest) is None
    }


def _alembic(args: argparse.Namespace) -> CodeRevisions | None:
    """The app's migration scripts, when an option names them."""
    if not (args.alembic_config or args.alembic_script_location):
        return None
    return CodeRevisions(
        alembic_config=args.alembic_config, script_location=args.alembic_script_location
    )


async def _check(
    engine: AsyncEngine,
    args: argparse.Namespace,
    pool: PoolSettings,
    alembic: CodeRevisions | None,
) -> Report:
    """One check through ``engine``, bounded by twice the connect timeout; disposes it."""
    try:
        return await asyncio.wait_for(
            check_engine(
                engine,
                workers=args.workers or 1,
                replicas=args.replicas or 1,
                request_timeout=args.request_timeout or DEFAULT_REQUEST_TIMEOUT,
                network_idle_timeout=args.network_idle_timeout,
                application_name=args.application_name,
                pool=pool,
                alembic=alembic,
                version_table=args.alembic_version_table,
            ),
            timeout=args.connect_timeout * 2,
        )
    finally:
        await engine.dispose()


def _run_sizing(args: argparse.Namespace, raw: str | None) -> int:
    """``--prometheus``: the database, when given, only for the server's limits."""
    try:
        url = _async_url(raw) if raw else None
    except ValueError as exc:
        print(f"observer doctor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    shown = display_url(raw, user=True) if raw else ""
    return run_sizing(args, url, lambda exc: _reason(exc, raw or ""), shown)


def run(args: argparse.Namespace) -> int:
    """Run doctor from parsed arguments; returns the exit code."""
    raw = args.database_url or os.environ.get(DATABASE_URL_ENV)
    problem = usage_problem(args)
    if problem is not None:
        print(f"observer doctor: {problem}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.prometheus is not None:
        return _run_sizing(args, raw)
    if not raw and not args.alembic_config:
        print(f"observer doctor: give DATABASE_URL (or set {DATABASE_URL_ENV})", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        resolved = with_alembic(raw, args)  # the URL alembic.ini names when none was given
        url = _async_url(resolved)
        pool = _pool(args)
        alembic = _alembic(args)
    except ValueError as exc:
        print(f"observer doctor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    engine = create_async_engine(
        url, poolclass=NullPool, connect_args={"timeout": args.connect_timeout}
    )
    shown = display_url(resolved, user=True)  # the string: it tells more than the parsed URL
    try:
        report = replace(asyncio.run(_check(engine, args, pool, alembic)), url=shown)
    except Exception as exc:
        reason = _reason(exc, resolved)
        print(f"observer doctor: could not check {shown}: {reason}", file=sys.stderr)
        if args.json:
            json.dump({"url": shown, "error": reason, "exit_code": EXIT_UNUSABLE}, sys.stdout)
            print()
        return EXIT_UNUSABLE
    assumed = _assumed(args)
    if args.json:
        data = report.to_dict()
        data["assumed"] = assumed
        data["exit_code"] = exit_code(report, args.fail_on)
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        render_text(report, sys.stdout, assumed)
    return exit_code(report, args.fail_on)
