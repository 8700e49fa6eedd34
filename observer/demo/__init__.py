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
        return _serve_workers(
            url,
            host=args.host,
            port=port,
            workers=args.workers,
            requests=requests,
            concurrency=args.concurrency,
            rounds=args.rounds,
        )
    return asyncio.run(
        _main(
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


def _serve_workers(
    url: str, *, host: str, port: int, workers: int, requests: int, concurrency: int, rounds: int
) -> int:
    """The demo app on several uvicorn workers (each instrumented, see app_from_env), with the
    load sent from this process once the server answers."""
    import threading

    import uvicorn

    os.environ["OBSERVER_DEMO_DATABASE_URL"] = url
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        print(
            "observer demo: PROMETHEUS_MULTIPROC_DIR is not set; each worker's /metrics will "
            "show only that worker",
            file=sys.stderr,
        )
    base_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    threading.Thread(
        target=lambda: asyncio.run(_load_rounds(base_url, requests, concurrency, rounds)),
        name="demo-load",
        daemon=True,
    ).start()
    uvicorn.run(
        "observer.demo.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )
    return 0


async def _load_rounds(base_url: str, requests: int, concurrency: int, rounds: int) -> None:
    import httpx

    from observer.demo.load import drive

    for _ in range(600):  # wait up to a minute for the workers to answer
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=1.0) as http:
                await http.get("/metrics")
            break
        except httpx.HTTPError:
            await asyncio.sleep(0.1)
    done = 0
    while rounds == 0 or done < rounds:
        result = await drive(base_url, requests=requests, concurrency=concurrency, progress=False)
        done += 1
        print(
            f"observer demo: load round {done}: {result.requests} requests in "
            f"{result.seconds:.1f} s; see {base_url}/metrics",
            flush=True,
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
    rounds: int = 1,
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
            serving=serve,
        )
        if serve:
            print(f"\nServing {base_url} (metrics at {base_url}/metrics); Ctrl-C to stop.")
            if rounds == 0:
                background = asyncio.create_task(
                    _load_rounds(base_url, requests, concurrency, rounds)
                )
            await serving
            if rounds == 0:
                background.cancel()
        else:
            server.should_exit = True
            await serving
        return 0
    finally:
        obs.close()
        await engine.dispose()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
