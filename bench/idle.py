"""What the held-idle measurement costs, per checkout and per statement, side by side.

``python -m bench.idle`` (``--tiny``: the same code on tiny counts, figures meaningless). Arms,
alternating in a rotated order each round on one engine and one pooled connection (as
bench/checkout.py): *bare*, *bare (A/A)*, *observer* (everything on, the idle measurement
included) and *observer, no idle measurement (what-if)*: the same Observer with its dialect
wrappers removed and the checkin's idle step replaced by nothing. The idle measurement's cost is
the paired difference between the two observer arms; it is reported per checkout (no
statement), per statement (``(Δ select10 - Δ select1) / 9``) and as a ratio of a bare
``SELECT 1`` checkout cycle (the budget: at most 2 %). The same loops run on a sync engine over
in-memory SQLite (no network, event loop or greenlet: the CPU cost with less noise).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from bench.checkout import Arm, Result, _bench
from bench.common import (
    PgServer,
    create_database,
    drop_database,
    median,
    pin,
    pin_backends_async,
    pinning_plan,
)
from observer import Observer

SELECT_1 = text("SELECT 1")
NO_IDLE = "observer, no idle measurement (what-if)"


class _IdleOff:
    """Stands in for a tracker's IdleWatch: nothing measured, nothing counted."""

    def returned(self, stamp: Any, now: float, live: bool) -> None:
        return None

    def activity(self, stamp: Any, now: float) -> tuple[str, float]:
        return "idle", 0.0

    def detach(self) -> None:
        return None

    def flush(self, sink: Any) -> None:
        return None

    def unflushed(self, view: Any) -> None:
        return None


def _attach(idle: bool) -> Callable[[Any], Observer]:
    def attach(engine: Any) -> Observer:
        obs = Observer(registry=CollectorRegistry(), idle_gap_log_seconds=None)
        obs.watch(engine, name="bench")
        if not idle:
            for tracker in obs._trackers.values():
                tracker._idle.detach()  # the dialect's own steps again
                tracker._idle = _IdleOff()  # type: ignore[assignment]
        return obs

    return attach


def _checkouts(obs: Observer) -> float | None:
    return obs.registry.get_sample_value("sqlalchemy_pool_checkouts_total", {"pool": "bench"})


def _gaps(obs: Observer) -> float | None:
    """Checkouts whose idle time was measured (one longest-gap observation each)."""
    return obs.registry.get_sample_value(
        "sqlalchemy_pool_connection_idle_gap_seconds_count", {"pool": "bench"}
    )


def arms() -> list[Arm]:
    def nothing(engine: Any) -> None:
        return None

    def close(obs: Any) -> None:
        if obs is not None:
            obs.close()

    return [
        Arm("bare", nothing, close, lambda _: None),
        Arm("bare (A/A)", nothing, close, lambda _: None),
        Arm("observer", _attach(idle=True), close, _gaps),
        Arm(NO_IDLE, _attach(idle=False), close, _checkouts),
    ]


def _async_loop(statements: int) -> Callable[[AsyncEngine, int], Awaitable[None]]:
    async def run(engine: AsyncEngine, n: int) -> None:
        for _ in range(n):
            async with engine.connect() as conn:
                for _ in range(statements):
                    await conn.execute(SELECT_1)

    return run


def _sync_loop(statements: int) -> Callable[[Any, int], Awaitable[None]]:
    async def run(engine: Any, n: int) -> None:
        for _ in range(n):
            with engine.connect() as conn:
                for _ in range(statements):
                    conn.execute(SELECT_1)

    return run


LOOPS = (("cycle", 0), ("select1", 1), ("select10", 10))


async def run(
    server: PgServer | None, database: str, *, cycles: int, rounds: int, sqlite_cycles: int
) -> dict[str, Result]:
    results: dict[str, Result] = {}
    plan = pinning_plan()
    if plan is not None:
        pin(os.getpid(), plan[0])  # this process on one core; PostgreSQL's backends on the other
    if server is not None:
        engine = create_async_engine(server.url(database), pool_size=5, max_overflow=0)
        try:
            async with engine.connect() as conn:  # the one connection every arm reuses
                await conn.execute(SELECT_1)
            if plan is not None:
                await pin_backends_async(server, database, plan[1])
            for name, statements in LOOPS:
                n = cycles if statements < 10 else max(1, cycles // 5)
                what = f"asyncpg: a checkout with {statements} x SELECT 1"
                results[name] = await _bench(
                    name, what, engine, _async_loop(statements), arms(), n, rounds
                )
        finally:
            await engine.dispose()
    sync = create_engine("sqlite://", poolclass=QueuePool, pool_size=5)
    try:
        for name, statements in LOOPS:
            n = sqlite_cycles if statements < 10 else max(1, sqlite_cycles // 5)
            what = f"sync SQLite: a checkout with {statements} x SELECT 1"
            results[f"{name} (sync, SQLite)"] = await _bench(
                f"{name} (sync, SQLite)", what, sync, _sync_loop(statements), arms(), n, rounds
            )
    finally:
        sync.dispose()
    return results


def idle_cost(results: dict[str, Result], suffix: str = "") -> dict[str, float]:
    """The idle measurement's paired cost (observer - no-idle arm, median over rounds): per
    checkout, per statement, and the ``SELECT 1`` cycle's as a share of bare (CPU and wall)."""

    def delta(name: str, cpu: bool) -> float:
        result = results[name + suffix]
        table = result.per_round_cpu if cpu else result.per_round
        return median(a - b for a, b in zip(table["observer"], table[NO_IDLE], strict=True))

    select1 = results["select1" + suffix]
    found: dict[str, float] = {}
    for kind, cpu in (("cpu", True), ("wall", False)):
        bare = median((select1.per_round_cpu if cpu else select1.per_round)["bare"])
        found[f"per_checkout_{kind}_us"] = delta("cycle", cpu)
        found[f"per_statement_{kind}_us"] = (delta("select10", cpu) - delta("select1", cpu)) / 9
        found[f"select1_{kind}_share"] = delta("select1", cpu) / bare
    return found


def markdown(results: dict[str, Result]) -> str:
    lines = []
    for result in results.values():
        lines += ["", f"**{result.name}**: {result.what}, {result.cycles:,} cycles x "]
        lines[-1] += f"{result.rounds} rounds per arm"
        lines += [
            "",
            "| arm | wall µs/cycle | spread | Δ wall µs | CPU µs/cycle | CPU spread | Δ CPU µs "
            "| counted |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in result.summary():
            counted = result.counted[row["arm"]]
            shown = "-" if counted[0] is None else f"{counted[0]:.0f} x {len(counted)}"
            lines.append(
                f"| {row['arm']} | {row['median_us']:.1f} | {row['spread']:.1%} "
                f"| {row['delta_us']:+.2f} | {row['cpu_us']:.1f} | {row['cpu_spread']:.1%} "
                f"| {row['cpu_delta_us']:+.2f} | {shown} |"
            )
    lines += ["", "| the idle measurement | per checkout µs | per statement µs | "]
    lines[-1] += "of a bare SELECT 1 cycle |"
    lines.append("|---|---|---|---|")
    for label, suffix in (("asyncpg", ""), ("sync SQLite", " (sync, SQLite)")):
        if "select1" + suffix not in results:
            continue
        cost = idle_cost(results, suffix)
        for kind in ("cpu", "wall"):
            lines.append(
                f"| {label}, {kind} | {cost[f'per_checkout_{kind}_us']:+.2f} "
                f"| {cost[f'per_statement_{kind}_us']:+.2f} "
                f"| {cost[f'select1_{kind}_share']:+.2%} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="tiny counts (figures meaningless)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-postgres", action="store_true", help="only the SQLite loops")
    args = parser.parse_args(argv)
    cycles, sqlite_cycles, rounds = (20, 50, 2) if args.tiny else (2000, 10000, 9)
    rounds = args.rounds or rounds
    server = None if args.no_postgres else PgServer()
    database = create_database(server) if server is not None else ""
    try:
        results = asyncio.run(
            run(server, database, cycles=cycles, rounds=rounds, sqlite_cycles=sqlite_cycles)
        )
    finally:
        if server is not None:
            drop_database(server, database)
    sys.stdout.write(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
