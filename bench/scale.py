"""Scale: ``/metrics`` render time and size with many pools and routes; memory after many
checkout cycles."""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import create_async_engine

from bench.common import median, rss_bytes
from observer import Observer
from observer.attribution._scope import RequestScope
from observer.metrics._exposition import render


def metrics_render(dsn: str, pools: int, routes: int, renders: int) -> dict[str, Any]:
    """Render time and size of the exposition with ``pools`` watched engines and ``routes``
    route label values (each route has counted checkouts, waits and holds)."""
    engines = [create_async_engine(dsn, pool_size=5) for _ in range(pools)]
    registry = CollectorRegistry()
    obs = Observer(registry=registry, max_routes=routes)
    try:
        for i, engine in enumerate(engines):
            obs.watch(engine, name=f"pool{i}")
        for i in range(routes):
            scope = RequestScope(route=f"/api/v1/resource{i}/{{item_id}}", method="GET")
            scope.checkouts, scope.wait_seconds, scope.hold_seconds = 1, 0.001, 0.002
            obs.routes.finish(scope)
        for _ in range(3):
            render(registry)  # warm-up
        text_times, om_times = [], []
        for _ in range(renders):
            started = perf_counter()
            body, _ = render(registry)
            text_times.append(perf_counter() - started)
            started = perf_counter()
            om_body, _ = render(registry, "application/openmetrics-text; version=1.0.0")
            om_times.append(perf_counter() - started)
        lines = body.decode().splitlines()
        return {
            "pools": pools,
            "routes": routes,
            "renders": renders,
            "text_ms": median(text_times) * 1e3,
            "text_ms_max": max(text_times) * 1e3,
            "openmetrics_ms": median(om_times) * 1e3,
            "bytes": len(body),
            "openmetrics_bytes": len(om_body),
            "series": sum(1 for line in lines if line and not line.startswith("#")),
            "route_series": sum(
                1 for line in lines if line.startswith("sqlalchemy_route_checkouts_total{")
            ),
            "pool_series": sum(
                1 for line in lines if line.startswith("sqlalchemy_pool_checkouts_total{")
            ),
        }
    finally:
        obs.close()
        for engine in engines:
            asyncio.run(engine.dispose())


async def _checkout_memory(dsn: str, cycles: int, checkpoints: int, trace: bool) -> dict[str, Any]:
    engine = create_async_engine(dsn, pool_size=5)
    registry = CollectorRegistry()
    obs = Observer(registry=registry)
    obs.watch(engine, name="bench")
    try:
        for _ in range(1000):  # warm-up
            async with engine.connect():
                pass
        gc.collect()
        if trace:  # 3-4x slower: only for short runs
            tracemalloc.start()
        start_rss, start_blocks = rss_bytes(), sys.getallocatedblocks()
        readings = []
        step = max(1, cycles // checkpoints)
        done = 0
        started = perf_counter()
        while done < cycles:
            n = min(step, cycles - done)
            for _ in range(n):
                async with engine.connect():
                    pass
            done += n
            gc.collect()
            readings.append(
                {
                    "cycles": done,
                    "rss": rss_bytes(),
                    "traced": tracemalloc.get_traced_memory()[0] if trace else None,
                    "blocks": sys.getallocatedblocks(),
                }
            )
        elapsed = perf_counter() - started
        tracemalloc.stop()
        counted = registry.get_sample_value("sqlalchemy_pool_checkouts_total", {"pool": "bench"})
        return {
            "cycles": cycles,
            "traced": trace,
            "seconds": elapsed,
            "start_rss": start_rss,
            "start_blocks": start_blocks,
            "readings": readings,
            "counted": counted,
            "expected": cycles + 1000,
            "pending": len(obs.hooks.pending),
        }
    finally:
        obs.close()
        await engine.dispose()


def checkout_memory(dsn: str, cycles: int, checkpoints: int, trace: bool) -> dict[str, Any]:
    return asyncio.run(_checkout_memory(dsn, cycles, checkpoints, trace))
