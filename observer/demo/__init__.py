"""``observer demo``: an instrumented app under a bounded load, with leaks to find."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

from observer.settings import ConfigurationError

SHORT_REQUESTS = 150


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace) -> int:
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
    except ConfigurationError as exc:
        print(f"observer demo: {exc}", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else (8000 if args.serve else 0)
    return asyncio.run(
        _main(
            url,
            requests=requests,
            concurrency=args.concurrency,
            serve=args.serve,
            host=args.host,
            port=port,
            progress=not args.no_progress,
        )
    )


@contextlib.contextmanager
def _collected_logs(events: Counter[str], keep: bool) -> Iterator[None]:
    """Count the library's log events during the load (printed in the summary, not one by one)."""
    import structlog

    old = structlog.get_config()

    def collect(logger: Any, name: str, event_dict: Any) -> Any:
        events[event_dict.get("event", "?")] += 1
        if not keep:
            raise structlog.DropEvent
        return event_dict

    structlog.configure(processors=[collect, *old["processors"]])
    pool_log = logging.getLogger("sqlalchemy.pool")
    level = pool_log.level
    # The demo leaks on purpose: SQLAlchemy's own warning about each connection the garbage
    # collector reclaims would drown the summary, which reports them already.
    pool_log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The garbage collector is trying")
            yield
    finally:
        pool_log.setLevel(level)
        structlog.configure(**old)


async def _main(
    url: str | None,
    *,
    requests: int,
    concurrency: int,
    serve: bool,
    host: str,
    port: int,
    progress: bool,
) -> int:
    import uvicorn
    from prometheus_client import CollectorRegistry
    from sqlalchemy.ext.asyncio import create_async_engine

    import observer
    from observer.demo.app import create_app
    from observer.demo.load import drive
    from observer.demo.report import write_report

    scratch = None
    if url is None:
        scratch = tempfile.mkdtemp(prefix="pool-observer-demo-")
        url = f"sqlite+aiosqlite:///{scratch}/demo.db"
        database = "an embedded SQLite file (give --database-url for PostgreSQL)"
    else:
        database = url.split("://", 1)[0]
    engine = create_async_engine(url, pool_size=5, max_overflow=5, pool_timeout=1.0)
    app = create_app(engine)
    registry = CollectorRegistry()
    obs = observer.instrument(
        app,
        engine,
        registry=registry,
        leak_threshold_seconds=2.0,
        sweep_interval_seconds=0.25,
        application_name="pool-observer-demo",
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    )
    events: Counter[str] = Counter()
    try:
        with _collected_logs(events, keep=False):
            serving = asyncio.create_task(server.serve())
            while not server.started:
                if serving.done():
                    await serving
                    print("observer demo: the server did not start", file=sys.stderr)
                    return 1
                await asyncio.sleep(0.05)
            bound = server.servers[0].sockets[0].getsockname()[1]
            base_url = f"http://{host}:{bound}"
            print(f"pool-observer demo: an instrumented FastAPI app on {base_url}, {database}")
            print(
                f"  sending {requests} requests ({concurrency} at a time): healthy ones, and some "
                "that leak sessions, hold connections or create engines per request"
            )
            load = await drive(
                base_url, requests=requests, concurrency=concurrency, progress=progress
            )
            gc.collect()  # sessions dropped without close are found when they are collected
            await asyncio.sleep(0.6)  # the sweeper counts them
        write_report(
            sys.stdout,
            load=load,
            snapshot=obs.snapshot(),
            registry=registry,
            events=events,
            base_url=base_url,
            database=database,
        )
        if serve:
            print(f"\nServing {base_url} (metrics at {base_url}/metrics); Ctrl-C to stop.")
            await serving
        else:
            server.should_exit = True
            await serving
        return 0
    finally:
        obs.close()
        await engine.dispose()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
