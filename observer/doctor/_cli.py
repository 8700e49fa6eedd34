"""``observer doctor`` on the command line: its options, then one check and its report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import replace
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from observer._dsn import display_url, redact
from observer._logs import scrub
from observer.doctor._engine import check_engine
from observer.doctor._pool_checks import (
    DEFAULT_MAX_OVERFLOW,
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    PoolSettings,
)
from observer.doctor._report import EXIT_UNUSABLE, Report, render_text
from observer.server._revisions import DEFAULT_VERSION_TABLE, CodeRevisions

DATABASE_URL_ENV = "OBSERVER_DATABASE_URL"


def _positive(kind: type[int] | type[float], name: str, minimum: float = 0) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number (got {text!r})") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum:g} (got {text})")
        return value

    return parse


def _seconds(name: str) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number (got {text!r})") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0 seconds (got {text})")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``observer doctor``."""
    parser.epilog = "exit codes: 0 clean, 1 findings, 2 usage error or database unreachable"
    parser.add_argument(
        "database_url",
        nargs="?",
        metavar="DATABASE_URL",
        help=f"postgresql[+asyncpg]://user:password@host:port/db (default: ${DATABASE_URL_ENV})",
    )
    parser.add_argument("--pool-size", type=_positive(int, "--pool-size"), default=None)
    parser.add_argument(
        "--max-overflow", type=_positive(int, "--max-overflow", -1), default=None,
        help="-1 for unbounded",
    )  # fmt: skip
    parser.add_argument(
        "--pool-recycle", type=_positive(float, "--pool-recycle", -1), default=None,
        help="seconds; -1 for never (SQLAlchemy's default)",
    )  # fmt: skip
    parser.add_argument("--pool-timeout", type=_seconds("--pool-timeout"), default=None)
    parser.add_argument("--pool-pre-ping", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--workers", type=_positive(int, "--workers", 1), default=1)
    parser.add_argument("--replicas", type=_positive(int, "--replicas", 1), default=1)
    parser.add_argument(
        "--request-timeout", type=_seconds("--request-timeout"),
        default=DEFAULT_REQUEST_TIMEOUT, help="seconds a client or proxy waits for a response",
    )  # fmt: skip
    parser.add_argument(
        "--network-idle-timeout", type=_seconds("--network-idle-timeout"), default=None,
        help="seconds a load balancer, NAT or firewall between app and database keeps an idle "
        "connection (e.g. 350 for an AWS NLB)",
    )  # fmt: skip
    parser.add_argument(
        "--application-name", default=None,
        help="application_name of the app's connections (default: $OBSERVER_APPLICATION_NAME "
        "or pool-observer)",
    )  # fmt: skip
    alembic = parser.add_mutually_exclusive_group()
    alembic.add_argument(
        "--alembic-config", metavar="ALEMBIC_INI",
        help="compare the database's Alembic revision with the head of this alembic.ini's scripts",
    )  # fmt: skip
    alembic.add_argument(
        "--alembic-script-location", metavar="DIR",
        help="the same, given the directory holding env.py and versions/",
    )  # fmt: skip
    parser.add_argument("--alembic-version-table", default=DEFAULT_VERSION_TABLE)
    parser.add_argument("--connect-timeout", type=_seconds("--connect-timeout"), default=10)
    parser.add_argument("--fail-on", choices=["error", "warning", "info"], default="warning")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _async_url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except ArgumentError:
        # SQLAlchemy's message repeats the string, password included: say it without it.
        raise ValueError(
            "DATABASE_URL is not a URL; expected postgresql://user:password@host:port/database"
        ) from None
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
        pool_pre_ping=args.pool_pre_ping,
    )


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
                workers=args.workers,
                replicas=args.replicas,
                request_timeout=args.request_timeout,
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


def run(args: argparse.Namespace) -> int:
    """Run doctor from parsed arguments; returns the exit code."""
    raw = args.database_url or os.environ.get(DATABASE_URL_ENV)
    if not raw:
        print(f"observer doctor: give DATABASE_URL (or set {DATABASE_URL_ENV})", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        url = _async_url(raw)
        pool = _pool(args)
        alembic = _alembic(args)
    except ValueError as exc:
        print(f"observer doctor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    engine = create_async_engine(
        url, poolclass=NullPool, connect_args={"timeout": args.connect_timeout}
    )
    shown = display_url(raw, user=True)  # the string: it tells more than the parsed URL
    try:
        report = replace(asyncio.run(_check(engine, args, pool, alembic)), url=shown)
    except Exception as exc:
        reason = _reason(exc, raw)
        print(f"observer doctor: could not check {shown}: {reason}", file=sys.stderr)
        if args.json:
            json.dump({"url": shown, "error": reason, "exit_code": EXIT_UNUSABLE}, sys.stdout)
            print()
        return EXIT_UNUSABLE
    if args.json:
        data = report.to_dict()
        data["exit_code"] = report.exit_code(args.fail_on)
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        render_text(report, sys.stdout)
    return report.exit_code(args.fail_on)
