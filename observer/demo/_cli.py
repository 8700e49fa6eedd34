"""``observer demo`` on the command line: its options, checked, then the run they ask for."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from observer.demo._run import main, serve_workers
from observer.settings import ConfigurationError

SHORT_REQUESTS = 150


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``observer demo``."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("OBSERVER_DEMO_DATABASE_URL"),
        help="an async SQLAlchemy URL, e.g. postgresql+asyncpg://user@host/db (default: an "
        "embedded SQLite file, nothing to install)",
    )
    parser.add_argument("--requests", type=int, default=600, help="requests to send (600)")
    parser.add_argument("--concurrency", type=int, default=12, help="parallel clients (12)")
    parser.add_argument(
        "--short", action="store_true", help=f"a quick run: {SHORT_REQUESTS} requests"
    )
    parser.add_argument(
        "--serve", action="store_true", help="keep serving after the load, until Ctrl-C"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=None, help="port (8000 with --serve, else any free one)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="serve with N uvicorn worker processes (needs --serve and --database-url; set "
        "PROMETHEUS_MULTIPROC_DIR so /metrics adds the workers up)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds of load to send (1); 0 keeps sending while serving, for dashboards",
    )


def run(args: argparse.Namespace) -> int:
    """Check the options, then run the demo; returns the exit code."""
    requests = SHORT_REQUESTS if args.short else args.requests
    try:
        if requests < 1:
            raise ConfigurationError(f"--requests must be >= 1 (got {requests})")
        if args.concurrency < 1:
            raise ConfigurationError(f"--concurrency must be >= 1 (got {args.concurrency})")
        url = args.database_url
        if url is not None and "+" not in url.split("://", 1)[0]:
            raise ConfigurationError(
                f"--database-url needs an async driver, e.g. postgresql+asyncpg://... "
                f"(got a URL for {url.split('://', 1)[0]!r})"
            )
        if args.workers < 1:
            raise ConfigurationError(f"--workers must be >= 1 (got {args.workers})")
        if args.workers > 1 and (not args.serve or url is None):
            raise ConfigurationError("--workers needs --serve and --database-url (PostgreSQL)")
        if args.rounds < 0 or (args.rounds == 0 and not args.serve):
            raise ConfigurationError("--rounds must be >= 1, or 0 (forever) with --serve")
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
