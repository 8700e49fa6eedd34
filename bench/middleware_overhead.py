"""Per-request cost of the ASGI middleware, in process (no server, no database).

Calls a trivial ASGI app directly, bare, wrapped by a pass-through middleware (the floor of
any pure ASGI middleware) and by ``Observer.middleware`` (default options, then
``server_timing=False``, then with a matched FastAPI route), interleaved rounds, and prints
the median microseconds per request and the difference.

Usage: ``.venv/bin/python -m bench.middleware_overhead``
"""

from __future__ import annotations

import asyncio
import statistics
from time import perf_counter
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from bench.app import PassThrough
from observer import Observer

N = 20_000
ROUNDS = 7


async def plain(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def send(message: Any) -> None:
    pass


def scope() -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/items/3",
        "raw_path": b"/items/3",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
        "scheme": "http",
        "server": ("test", 80),
        "client": ("127.0.0.1", 1234),
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
    }


async def per_request(app: Any) -> float:
    started = perf_counter()
    for _ in range(N):
        await app(scope(), receive, send)
    return (perf_counter() - started) / N * 1e6


async def main() -> None:
    default = Observer(registry=CollectorRegistry(), metrics_path=None)
    no_timing = Observer(registry=CollectorRegistry(), metrics_path=None, server_timing=False)
    fastapi_app = FastAPI()

    @fastapi_app.get("/items/{item_id}")
    async def item(item_id: int) -> int:
        return item_id

    fastapi_observed = FastAPI()
    fastapi_observed.router = fastapi_app.router
    fastapi_wrapped = Observer(registry=CollectorRegistry(), metrics_path=None)
    cases = {
        "bare ASGI app": plain,
        "+ pass-through middleware (the floor)": PassThrough(plain),
        "+ middleware (default)": default.middleware(plain),
        "+ middleware (server_timing=False)": no_timing.middleware(plain),
        "FastAPI route": fastapi_app,
        "FastAPI route + pass-through middleware": PassThrough(fastapi_app),
        "FastAPI route + middleware": fastapi_wrapped.middleware(fastapi_app),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, app in cases.items():
            results[name].append(await per_request(app))
    base = statistics.median(results["bare ASGI app"])
    fast = statistics.median(results["FastAPI route"])
    for name, values in results.items():
        median = statistics.median(values)
        ref = fast if name.startswith("FastAPI") else base
        print(f"{name:38s} {median:7.2f} us/request  (+{median - ref:5.2f} us)")
    for obs in (default, no_timing, fastapi_wrapped):
        obs.close()


if __name__ == "__main__":
    asyncio.run(main())
