"""The demo's run: serve the demo app, send it load, report what the observer found."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING

from observer._dsn import display_url
from observer.demo._quiet import ErrorTally, Findings, quiet, uvicorn_log_config

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry

    from observer import Observer

LIVE_PAGE = "/observer"
POOL_TIMEOUT = 1.0  # seconds a request waits for a connection before its 503


def serve_workers(
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

    from observer.demo._load import drive

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


def _scratch_database(url: str | None) -> tuple[str, str, str | None]:
    """(URL, how the summary names the database, scratch directory to remove or None)."""
    if url is not None:
        return url, display_url(url), None
    scratch = tempfile.mkdtemp(prefix="pool-observer-demo-")
    url = f"sqlite+aiosqlite:///{scratch}/demo.db"
    return url, "an embedded SQLite file (give --database-url for PostgreSQL)", scratch


async def main(
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
    """The demo app on one uvicorn server in this loop, instrumented, under load; the report."""
    import uvicorn
    from prometheus_client import CollectorRegistry
    from sqlalchemy.ext.asyncio import create_async_engine

    import observer
    from observer.demo.app import create_app

    url, database, scratch = _scratch_database(url)
    engine = create_async_engine(url, pool_size=5, max_overflow=5, pool_timeout=POOL_TIMEOUT)
    app = create_app(engine)
    registry = CollectorRegistry()
    obs = observer.instrument(
        app,
        engine,
        registry=registry,
        leak_threshold_seconds=2.0,
        idle_gap_log_seconds=0.25,  # the ship endpoint's 0.3 s carrier call is logged
        sweep_interval_seconds=0.25,
        application_name="pool-observer-demo",
        live_page_path=LIVE_PAGE,
    )
    # Every event is counted for the report, none printed: nothing to rate-limit.
    obs.limiter.burst = sys.maxsize
    findings = Findings()
    tally = ErrorTally(findings.errors)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        log_config=uvicorn_log_config(tally),
    )
    # Quiet until the observer is closed: its sweeper may still report a leak after the report.
    with quiet(findings, tally):
        try:
            return await _load_and_report(
                uvicorn.Server(config),
                app,
                obs,
                registry,
                findings,
                tally,
                database=database,
                host=host,
                requests=requests,
                concurrency=concurrency,
                progress=progress,
                serve=serve,
                rounds=rounds,
            )
        finally:
            obs.close()
            await engine.dispose()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)


async def _started(server: uvicorn.Server, serving: asyncio.Task[None], host: str) -> str | None:
    """The server's base URL once it listens; None (said on stderr) if it stopped instead."""
    while not server.started:
        if serving.done():
            await serving
            print("observer demo: the server did not start", file=sys.stderr)
            return None
        await asyncio.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return f"http://{host}:{bound}"


async def _load_and_report(
    server: uvicorn.Server,
    app: FastAPI,
    obs: Observer,
    registry: CollectorRegistry,
    findings: Findings,
    tally: ErrorTally,
    *,
    database: str,
    host: str,
    requests: int,
    concurrency: int,
    progress: bool,
    serve: bool,
    rounds: int,
) -> int:
    """Start serving, print where to look, send the load, print the report, then stop or
    (``serve``) keep serving; the exit code."""
    from observer.demo._load import MIX, drive
    from observer.demo._report import Report, write_report

    serving = asyncio.create_task(server.serve())
    base_url = await _started(server, serving, host)
    if base_url is None:
        return 1
    print(f"pool-observer demo: open the live page now: {base_url}{LIVE_PAGE}")
    print(f"  an instrumented FastAPI app on {base_url}, database: {database}")
    print(
        f"  sending {requests} requests ({concurrency} at a time) to {len(MIX)} routes: healthy "
        "ones, and some that leak sessions, hold connections or create engines per request",
        flush=True,
    )
    load = await drive(base_url, requests=requests, concurrency=concurrency, progress=progress)
    # sessions dropped without close are found when they are collected (from this task, not
    # from a greenlet: _leaked.py)
    app.state.leaked_sessions.collect()
    await asyncio.sleep(0.6)  # the sweeper counts them
    report = Report(
        load=load,
        snapshot=obs.snapshot(),
        registry=registry,
        findings=findings,
        base_url=base_url,
        live_page=LIVE_PAGE,
        database=database,
        pool_timeout=POOL_TIMEOUT,
        answered_503=app.state.pool_timeouts,
        serving=serve,
    )
    write_report(sys.stdout, report)
    if not serve:
        server.should_exit = True
        await serving
        return 0
    print(f"\nServing the live page on {base_url}{LIVE_PAGE}; Ctrl-C to stop.", flush=True)
    tally.quiet = False  # no progress bar any more: one line per error the app logs
    background = None
    if rounds == 0:
        background = asyncio.create_task(_load_rounds(base_url, requests, concurrency, rounds))
    await serving
    if background is not None:
        background.cancel()
    return 0
