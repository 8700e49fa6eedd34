"""In-process ASGI drivers: the app called as ``await app(scope, receive, send)``, no sockets.

Used for the per-request cost without HTTP noise (one fresh process per arm and round) and for
the memory run over many distinct URLs.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from collections.abc import Sequence
from time import perf_counter, process_time
from typing import Any

from bench.common import rss_bytes

Message = dict[str, Any]


class Driver:
    """Sends GET requests straight into an ASGI app and checks the status."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.statuses: dict[int, int] = {}

    async def get(self, path: str) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"bench"), (b"user-agent", b"bench")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        status = 0
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(3600)  # a disconnect never comes
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await self.app(scope, receive, send)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status

    async def many(self, paths: Sequence[str], concurrency: int = 1) -> None:
        if concurrency <= 1:
            for path in paths:
                await self.get(path)
            return
        for start in range(0, len(paths), concurrency):
            await asyncio.gather(*(self.get(p) for p in paths[start : start + concurrency]))


async def overhead(arm: str, dsn: str, requests: int, endpoints: Sequence[str]) -> dict[str, Any]:
    """µs per request for each endpoint, for one arm, in this process."""
    from bench.app import create_app

    app, engine = create_app(arm, dsn)
    driver = Driver(app)
    result: dict[str, Any] = {"arm": arm}
    try:
        for endpoint in endpoints:
            await driver.many([endpoint] * max(20, requests // 10))  # warm-up
            gc.collect()
            started, started_cpu = perf_counter(), process_time()
            await driver.many([endpoint] * requests)
            result[endpoint] = (perf_counter() - started) / requests * 1e6
            result[endpoint + " cpu"] = (process_time() - started_cpu) / requests * 1e6
        result["statuses"] = driver.statuses
    finally:
        await engine.dispose()
    return result


async def memory(
    dsn: str, requests: int, distinct: int, checkpoints: int, trace: bool
) -> dict[str, Any]:
    """Drive ``requests`` requests over ``distinct`` URLs through an instrumented app; memory
    readings at each checkpoint. tracemalloc starts after the warm-up (it counts what the run
    added), RSS is of the whole process."""
    from prometheus_client import CollectorRegistry

    from bench.app import create_app
    from observer.metrics._exposition import render

    registry = CollectorRegistry()
    app, engine = create_app("observer", dsn, registry=registry)
    driver = Driver(app)
    paths = [f"/items/{i % distinct}" for i in range(requests)]
    try:
        warmup = min(1000, requests)
        await driver.many(paths[:warmup], concurrency=10)
        gc.collect()
        if trace:  # 2-3x slower: only for short runs
            tracemalloc.start()
        start_rss, start_blocks = rss_bytes(), sys.getallocatedblocks()
        readings = []
        step = max(1, requests // checkpoints)
        started = perf_counter()
        for begin in range(0, requests, step):
            await driver.many(paths[begin : begin + step], concurrency=10)
            gc.collect()
            readings.append(
                {
                    "requests": begin + len(paths[begin : begin + step]),
                    "rss": rss_bytes(),
                    "traced": tracemalloc.get_traced_memory()[0] if trace else None,
                    "blocks": sys.getallocatedblocks(),
                }
            )
        elapsed = perf_counter() - started
        tracemalloc.stop()
        body, _ = render(registry)
        observer = app.user_middleware[0].kwargs["observer"]
        return {
            "requests": requests,
            "warmup": warmup,
            "distinct": distinct,
            "traced": trace,
            "seconds": elapsed,
            "start_rss": start_rss,
            "start_blocks": start_blocks,
            "readings": readings,
            "statuses": driver.statuses,
            "route_series": sum(
                1
                for line in body.decode().splitlines()
                if line.startswith("sqlalchemy_route_checkouts_total{")
            ),
            "route_checkouts": _sample(
                body, 'sqlalchemy_route_checkouts_total{route="/items/{item_id}"}'
            ),
            "sessions_open": len(observer.sessions.open),
            "pending": len(observer.hooks.pending),
        }
    finally:
        await engine.dispose()


def _sample(body: bytes, series: str) -> float:
    for line in body.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")
