"""``observer demo`` on the command line: its options, checked, then the run they ask for."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable

from sqlalchemy.engine import make_url

from observer import _values as values
from observer.demo._run import main, serve_workers
from observer.settings import ConfigurationError

SHORT_REQUESTS = 150
CONNECT_TIMEOUT = 10.0  # seconds for the check that the database answers


def _database_url(text: str, name: str) -> str:
    """An async SQLAlchemy URL (the demo's app is async); never repeated: it may hold a password."""
    url = values.database_url(text, name)
    if "+" not in url.drivername:
        raise ValueError(
            f"{name} needs an async driver, e.g. postgresql+asyncpg://... "
            f"(got a URL for {url.drivername!r})"
        )
    return text


def _count(flag: str, low: int, high: int) -> Callable[[str], int]:
    return values.argument(values.whole, flag, low, high)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``observer demo``."""
    parser.add_argument(
        "--database-url", default=os.environ.get("OBSERVER_DEMO_DATABASE_URL"), metavar="URL",
        type=values.argument(_database_url, "--database-url"),
        help="an async SQLAlchemy URL, e.g. postgresql+asyncpg://user@host/db (default: "
        "$OBSERVER_DEMO_DATABASE_URL, else an embedded SQLite file, nothing to install)",
    )  # fmt: skip
    parser.add_argument(
        "--requests", type=_count("--requests", 1, 1_000_000), default=600, metavar="N",
        help="requests to send in each round (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=_count("--concurrency", 1, 1000), default=12, metavar="N",
        help="parallel clients (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--short", action="store_true", help=f"a quick run: {SHORT_REQUESTS} requests"
    )
    parser.add_argument(
        "--serve", action="store_true", help="keep serving after the load, until Ctrl-C"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", type=values.argument(values.host, "--host"),
        help="address to listen on (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--port", type=_count("--port", 0, 65535), default=None,
        help="TCP port to listen on, 0 for any free one (default: 8000 with --serve, else any "
        "free one)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--workers", type=_count("--workers", 1, 64), default=1, metavar="N",
        help="serve with N uvicorn worker processes (needs --serve and --database-url; set "
        "PROMETHEUS_MULTIPROC_DIR so /metrics adds the workers up; default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=_count("--rounds", 0, 1_000_000), default=1, metavar="N",
        help="rounds of load to send; 0 keeps sending while serving, for dashboards (default: "
        "%(default)s)",
    )  # fmt: skip


async def _connect_once(url: str) -> None:
    """Open and close one connection, so that a wrong host or password is one line up front
    (not a server that fails to start)."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT), engine.connect():
            pass
    finally:
        await engine.dispose()


def _unreachable(url: str) -> str | None:
    """Why the database at ``url`` cannot be used, in one line without its password; or None."""
    try:
        asyncio.run(_connect_once(url))
    except Exception as exc:
        # SQLAlchemy wraps the driver's error (asyncpg's, under the adapter's own class)
        cause = getattr(exc, "orig", None) or exc
        cause = cause.__cause__ or cause
        reason = (str(cause).strip().splitlines() or [""])[0]
        parsed = make_url(url)
        if parsed.password:
            reason = reason.replace(str(parsed.password), "***")
        if isinstance(cause, TimeoutError):
            reason = f"no answer within {CONNECT_TIMEOUT:g} s"
        return (
            f"cannot connect to --database-url {parsed.render_as_string(hide_password=True)} "
            f"({type(cause).__name__}: {reason}); check its host, port, user and password"
        )
    return None


def run(args: argparse.Namespace) -> int:
    """Check the options, then run the demo; returns the exit code."""
    requests = SHORT_REQUESTS if args.short else args.requests
    url = args.database_url
    try:
        if args.workers > 1 and (not args.serve or url is None):
            raise ConfigurationError("--workers needs --serve and --database-url (PostgreSQL)")
        if args.rounds == 0 and not args.serve:
            raise ConfigurationError("--rounds must be >= 1, or 0 (forever) with --serve")
        problem = None if url is None else _unreachable(url)
        if problem is not None:
            raise ConfigurationError(problem)
    except ConfigurationError as exc:
        print(f"observer demo: {exc}", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else (8000 if args.serve else 0)
    if args.workers > 1:
        return serve_workers(
            url,
            host=args.host,
            port=port,
            workers=args.workers,
            requests=requests,
            concurrency=args.concurrency,
            rounds=args.rounds,
        )
    try:
        return asyncio.run(
            main(
                url,
                requests=requests,
                concurrency=args.concurrency,
                serve=args.serve,
                host=args.host,
                port=port,
                progress=not args.no_progress,
                rounds=args.rounds,
            )
        )
    except KeyboardInterrupt:  # Ctrl-C, which --serve asks for: the server has shut down
        return 130
