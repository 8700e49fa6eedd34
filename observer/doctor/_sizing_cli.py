"""``observer doctor --prometheus``: its options, checked, then the sizing and its report."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from observer.doctor._history import find_job, read_history
from observer.doctor._pool_checks import DEFAULT_REQUEST_TIMEOUT
from observer.doctor._prometheus import PrometheusError, connect
from observer.doctor._report import EXIT_UNUSABLE
from observer.doctor._sizing import ServerRoom
from observer.doctor._sizing_report import build_sizing_report, render_sizing
from observer.monitoring.config import duration_seconds
from observer.server._view import read_settings

MIN_RANGE_SECONDS, MAX_RANGE_SECONDS = 15 * 60, 366 * 86400
# Options of the settings check that describe what --prometheus reads from the fleet itself.
_NOT_WITH_PROMETHEUS = {
    "pool_size": "--pool-size",
    "max_overflow": "--max-overflow",
    "pool_recycle": "--pool-recycle",
    "pool_timeout": "--pool-timeout",
    "pool_pre_ping": "--pool-pre-ping",
    "workers": "--workers",
    "replicas": "--replicas",
    "network_idle_timeout": "--network-idle-timeout",
    "application_name": "--application-name",
    "alembic_config": "--alembic-config",
    "alembic_script_location": "--alembic-script-location",
}


def range_argument(text: str) -> str:
    """argparse ``type=`` of ``--range``: a Prometheus duration from 15m to 366d."""
    try:
        seconds = duration_seconds(text)
    except ValueError:
        seconds = None
    if seconds is None or not MIN_RANGE_SECONDS <= seconds <= MAX_RANGE_SECONDS:
        raise argparse.ArgumentTypeError(
            f"--range must be a Prometheus duration from 15m to 366d, such as 7d or 12h "
            f"(got {text!r}); it is how much history doctor reads"
        )
    return text


def job_argument(text: str) -> str:
    """argparse ``type=`` of ``--job``: a label value of printable characters."""
    if not text or not text.isprintable() or len(text) > 200:
        raise argparse.ArgumentTypeError(
            f"--job must be the Prometheus job label of the app's scrape target, printable "
            f"and at most 200 characters (got {text!r})"
        )
    return text


def add_sizing_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--prometheus`` options of ``observer doctor``."""
    group = parser.add_argument_group("pool sizes from the fleet's history (--prometheus)")
    group.add_argument(
        "--prometheus", metavar="URL",
        help="read the fleet's history from this Prometheus HTTP API (http://host:9090; "
        "user:password@ for basic auth, or a bearer token in $OBSERVER_PROMETHEUS_TOKEN) and "
        "recommend pool_size, max_overflow and pool_timeout per process; no database needed",
    )  # fmt: skip
    group.add_argument(
        "--job", type=job_argument,
        help="the app's Prometheus job label (default: the only job with pool metrics)",
    )  # fmt: skip
    group.add_argument(
        "--range", type=range_argument, default="7d", metavar="DURATION",
        help="how much history to read, a Prometheus duration (default: %(default)s)",
    )  # fmt: skip


def usage_problem(args: argparse.Namespace) -> str | None:
    """The usage error of this combination of options, if any."""
    if args.prometheus is None:
        for flag in ("job",):
            if getattr(args, flag) is not None:
                return f"--{flag} goes with --prometheus URL: give both, or drop --{flag}"
        return None
    for dest, flag in _NOT_WITH_PROMETHEUS.items():
        if getattr(args, dest) is not None:
            return (
                f"{flag} describes the app for the settings check; with --prometheus, doctor "
                f"reads it from the fleet's metrics: drop {flag}"
            )
    if args.fail_on == "drift":
        return "--fail-on drift needs the migration scripts, not --prometheus"
    return None


async def _server(url: URL, seconds: float) -> ServerRoom:
    """The server's connection limits, read over one connection within ``2 x seconds``."""
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": seconds})
    try:
        async with asyncio.timeout(seconds * 2), engine.connect() as conn:
            settings = await read_settings(conn)
            await conn.rollback()
    finally:
        await engine.dispose()
    reserved = settings.superuser_reserved_connections + settings.reserved_connections
    return ServerRoom(settings.max_connections, reserved, "the database")


def run_sizing(
    args: argparse.Namespace,
    url: URL | None,
    describe_db_error: Callable[[Exception], str],
    shown_db: str,
) -> int:
    """Read the history, size the pools, check against the server when ``url`` is given;
    returns the exit code (2 for bad input or an unreachable Prometheus or database)."""
    try:
        prom = connect(args.prometheus, timeout=args.connect_timeout, environ=os.environ)
    except ValueError as exc:
        return _fail(str(exc), args, "")
    seconds = duration_seconds(args.range)
    try:
        end = time.time()
        job = find_job(prom, args.job, end - seconds, end, args.range)
        history = read_history(prom, job, seconds, args.range, end)
    except PrometheusError as exc:
        return _fail(str(exc), args, prom.shown)
    server = None
    if url is not None:
        try:
            server = asyncio.run(_server(url, args.connect_timeout))
        except Exception as exc:
            return _fail(f"could not check {shown_db}: {describe_db_error(exc)}", args, prom.shown)
    timeout = args.request_timeout or DEFAULT_REQUEST_TIMEOUT
    report = build_sizing_report(prom.shown, args.range, history, timeout, server)
    code = report.exit_code(args.fail_on)
    if args.json:
        json.dump({**report.to_dict(), "exit_code": code}, sys.stdout, indent=2)
        print()
    else:
        render_sizing(report, sys.stdout)
    return code


def _fail(message: str, args: argparse.Namespace, shown: str) -> int:
    """One line on stderr; with --json, the error as JSON on stdout too."""
    print(f"observer doctor: {message}", file=sys.stderr)
    if args.json:
        json.dump({"prometheus": shown, "error": message, "exit_code": EXIT_UNUSABLE}, sys.stdout)
        print()
    return EXIT_UNUSABLE
