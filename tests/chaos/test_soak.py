"""Soak: sustained mixed load on an instrumented server; memory stays flat, gauges never leave
their bounds and return exactly to zero, and no leak is reported where there is none.

Bounded by ``OBSERVER_SOAK_SECONDS`` (8 s of load by default, what CI runs; e.g. 120 for a
longer run) at ``OBSERVER_SOAK_CONCURRENCY`` clients (16).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
from pathlib import Path

import httpx
import pytest

from tests.chaos import harness
from tests.chaos.harness import Outcomes

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

SECONDS = float(os.environ.get("OBSERVER_SOAK_SECONDS", "8"))
CONCURRENCY = int(os.environ.get("OBSERVER_SOAK_CONCURRENCY", "16"))
WARMUP = min(2.0, SECONDS / 4)
MAX_CONNECTIONS = 6  # the chaos app's pool: 4 + 2 overflow
ARMS = os.environ.get("OBSERVER_SOAK_ARMS", "observer").split(",")  # "bare,observer" compares
RSS_GROWTH_KIB = 8 * 1024  # allowed RSS growth from the first to the last third of the run


async def _soak(server: harness.Server) -> tuple[Outcomes, list[tuple[float, int]], list[float]]:
    outcomes: Outcomes = Outcomes()
    rss: list[tuple[float, int]] = []
    gauges: list[float] = []
    paths = itertools.cycle(["/work"] * 6 + ["/sleep?seconds=0.01"] * 2 + ["/stream?chunks=2"])
    started = time.monotonic()
    deadline = started + SECONDS
    limits = httpx.Limits(max_connections=CONCURRENCY + 2)
    async with httpx.AsyncClient(base_url=server.url, limits=limits) as client:

        async def worker() -> None:
            while time.monotonic() < deadline:
                outcomes[await harness.fetch(client, next(paths))] += 1

        async def sampler() -> None:
            while time.monotonic() < deadline:
                state = (await client.get("/admin/state")).json()
                rss.append((time.monotonic() - started, state["rss_kib"]))
                await asyncio.sleep(0.25)
                if not server.observer:
                    continue
                samples = await asyncio.to_thread(server.metrics)
                gauges.append(
                    harness.value(
                        samples,
                        "sqlalchemy_pool_checked_out_connections",
                        pool=harness.pool_label(server.env["CHAOS_DATABASE_URL"]),
                    )
                    or 0.0
                )

        await asyncio.gather(sampler(), *(worker() for _ in range(CONCURRENCY)))
    return outcomes, rss, gauges


@pytest.mark.parametrize("arm", ARMS)
def test_soak(chaos_url: str, tmp_path: Path, arm: str) -> None:
    """Every request succeeds; RSS after warm-up grows by less than 8 MiB between the first and
    the last third; checked-out stays within [0, max connections] throughout and is 0 after;
    every invariant holds and no leak is reported. (The ``bare`` arm, on demand, measures the
    same app without the observer, for comparison.)"""
    observed = arm == "observer"
    server = harness.start_server(chaos_url, tmp_path / "soak.log", observer=observed)
    figures: dict[str, float] = {}
    try:
        outcomes, rss, gauges = asyncio.run(_soak(server))
        if observed:
            figures = harness.settle(server, harness.pool_label(chaos_url))
    finally:
        harness.stop_server(server)
    requests = sum(outcomes.values())
    assert outcomes == {"200": requests}
    steady = [kib for at, kib in rss if at >= WARMUP]
    third = max(1, len(steady) // 3)
    first, last = statistics.median(steady[:third]), statistics.median(steady[-third:])
    assert last - first < RSS_GROWTH_KIB, rss
    assert all(0 <= g <= MAX_CONNECTIONS for g in gauges), gauges
    assert harness.observer_origins(server.log()) == []
    assert "Traceback" not in server.log()
    harness.record(
        f"soak_{arm}",
        seconds=SECONDS,
        requests=requests,
        rss_first_kib=first,
        rss_last_kib=last,
        max_checked_out=max(gauges, default=0),
        figures=figures,
    )
