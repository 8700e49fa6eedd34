"""A bounded, mixed load against the demo app, with a progress bar."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

# (path template, weight): mostly healthy traffic, some of every failure mode.
MIX: tuple[tuple[str, int], ...] = (
    ("/orders/{n}", 60),
    ("/reports/daily", 12),
    ("/orders/{n}/ship", 6),
    ("/cart/{n}", 10),
    ("/checkout/{n}", 8),
    ("/stats", 6),
    ("/no-such-page/{n}", 4),
)


@dataclass
class LoadResult:
    requests: int = 0
    seconds: float = 0.0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)  # (template, status)
    failures: Counter[str] = field(default_factory=Counter)  # template -> transport errors


def _progress(done: int, total: int, started: float) -> None:
    width = 30
    filled = width * done // total
    rate = done / max(time.monotonic() - started, 1e-9)
    line = f"\r  load [{'#' * filled}{'.' * (width - filled)}] {done}/{total}  {rate:5.0f} req/s"
    sys.stderr.write(line + ("\n" if done == total else ""))
    sys.stderr.flush()


async def drive(
    base_url: str, *, requests: int, concurrency: int, seed: int = 7, progress: bool = True
) -> LoadResult:
    """Send ``requests`` requests with ``concurrency`` clients; never more, never longer than
    each request's own timeout."""
    rng = random.Random(seed)
    templates = [path for path, _ in MIX]
    weights = [weight for _, weight in MIX]
    plan = rng.choices(templates, weights=weights, k=requests)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for template in plan:
        queue.put_nowait(template)
    result = LoadResult()
    started = time.monotonic()
    done = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal done
        while True:
            try:
                template = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            path = template.replace("{n}", str(rng.randint(1, 100)))
            try:
                response = await http.get(path)
                result.statuses[(template, response.status_code)] += 1
            except httpx.HTTPError as exc:
                result.failures[f"{template} ({type(exc).__name__})"] += 1
            done += 1
            if progress and (done % 10 == 0 or done == requests):
                _progress(done, requests, started)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    result.requests = requests
    result.seconds = time.monotonic() - started
    return result
