"""Checkout cycles and ORM sessions in-process against real PostgreSQL: bare vs watched vs OTel.

One engine and one connection for every arm: the arms differ only in what is attached to the
engine, attached right before the arm's turn and removed right after. Arms alternate within
each round (in a rotated order), and each figure is the median over rounds.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from bench.common import PgServer, median, pin_backends_async, rotated, spread
from bench.otel import OTel
from observer import Observer

SELECT_1 = text("SELECT 1")


@dataclass
class Arm:
    """What is attached to the engine for one arm, and how to count what it saw."""

    name: str
    attach: Callable[[AsyncEngine], Any]
    detach: Callable[[Any], None]
    counted: Callable[[Any], float | None]


def _observer(capture_origin: bool) -> tuple[Callable[[AsyncEngine], Any], Callable[[Any], None]]:
    def attach(engine: AsyncEngine) -> Observer:
        obs = Observer(registry=CollectorRegistry(), capture_origin=capture_origin)
        obs.watch(engine, name="bench")
        return obs

    def detach(obs: Observer) -> None:
        obs.close()

    return attach, detach


def _observer_checkouts(obs: Observer) -> float | None:
    return obs.registry.get_sample_value("sqlalchemy_pool_checkouts_total", {"pool": "bench"})


def _observer_sessions(obs: Observer) -> float | None:
    return obs.registry.get_sample_value("sqlalchemy_orm_sessions_opened_total")


_OTEL = OTel()


def _otel_attach(engine: AsyncEngine) -> Any:
    spans_before = _OTEL.spans()
    return (_OTEL.instrument_sqlalchemy(engine.sync_engine), spans_before)


def _otel_detach(state: Any) -> None:
    instrumentor, _ = state
    instrumentor.uninstrument()


def _otel_spans(state: Any) -> float:
    _, before = state
    return float(_OTEL.spans() - before)


def _nothing(engine: AsyncEngine) -> None:
    return None


def _no_detach(state: Any) -> None:
    return None


def _no_count(state: Any) -> None:
    return None


def arms(session: bool) -> list[Arm]:
    count = _observer_sessions if session else _observer_checkouts
    found = [
        Arm("bare", _nothing, _no_detach, _no_count),
        Arm("bare (A/A)", _nothing, _no_detach, _no_count),
    ]
    if session:
        a, d = _observer(capture_origin=False)
        found.append(Arm("observer, capture_origin=False", a, d, count))
        a, d = _observer(capture_origin=True)
        found.append(Arm("observer, capture_origin=True", a, d, count))
    else:
        a, d = _observer(capture_origin=True)
        found.append(Arm("observer", a, d, count))
    found.append(Arm("otel-sqlalchemy", _otel_attach, _otel_detach, _otel_spans))
    return found


async def _cycles(engine: AsyncEngine, n: int) -> None:
    for _ in range(n):
        async with engine.connect():
            pass


async def _select1(engine: AsyncEngine, n: int) -> None:
    for _ in range(n):
        async with engine.connect() as conn:
            await conn.execute(SELECT_1)


def _session_loop(engine: AsyncEngine) -> Callable[[AsyncEngine, int], Awaitable[None]]:
    factory = async_sessionmaker(engine, expire_on_commit=False)

    async def run(_: AsyncEngine, n: int) -> None:
        for _ in range(n):
            async with factory() as session:
                await session.execute(SELECT_1)

    return run


@dataclass
class Result:
    name: str
    what: str
    cycles: int
    rounds: int
    per_round: dict[str, list[float]] = field(default_factory=dict)  # arm -> µs per cycle
    counted: dict[str, list[float | None]] = field(default_factory=dict)

    def summary(self) -> list[dict[str, Any]]:
        bare = self.per_round["bare"]
        rows = []
        for arm, values in self.per_round.items():
            deltas = [v - b for v, b in zip(values, bare, strict=True)]
            rows.append(
                {
                    "arm": arm,
                    "median_us": median(values),
                    "min_us": min(values),
                    "spread": spread(values),
                    "delta_us": median(deltas),
                    "ratio": median(values) / median(bare),
                }
            )
        return rows


async def _bench(
    name: str,
    what: str,
    engine: AsyncEngine,
    loop: Callable[[AsyncEngine, int], Awaitable[None]],
    arm_list: list[Arm],
    cycles: int,
    rounds: int,
) -> Result:
    result = Result(name, what, cycles, rounds)
    for arm in arm_list:  # warm-up: every arm once, short
        state = arm.attach(engine)
        await loop(engine, max(10, cycles // 10))
        arm.detach(state)
    for r in range(rounds):
        for arm_name in rotated([a.name for a in arm_list], r):
            arm = next(a for a in arm_list if a.name == arm_name)
            state = arm.attach(engine)
            gc.collect()
            started = perf_counter()
            await loop(engine, cycles)
            elapsed = perf_counter() - started
            counted = arm.counted(state)
            arm.detach(state)
            result.per_round.setdefault(arm.name, []).append(elapsed / cycles * 1e6)
            result.counted.setdefault(arm.name, []).append(counted)
    return result


async def run(
    server: PgServer,
    database: str,
    *,
    cycles: int,
    select_cycles: int,
    rounds: int,
    pg_core: int | None,
) -> list[Result]:
    engine = create_async_engine(server.url(database), pool_size=5, max_overflow=0)
    try:
        async with engine.connect() as conn:  # open the one connection every arm reuses
            await conn.execute(SELECT_1)
        if pg_core is not None:
            await pin_backends_async(server, database, pg_core)
        results = [
            await _bench(
                "cycle",
                "`async with engine.connect(): pass`",
                engine,
                _cycles,
                arms(session=False),
                cycles,
                rounds,
            ),
            await _bench(
                "select1",
                "`async with engine.connect() as c: await c.execute(SELECT 1)`",
                engine,
                _select1,
                arms(session=False),
                select_cycles,
                rounds,
            ),
            await _bench(
                "session",
                "`async with Session() as s: await s.execute(SELECT 1)`",
                engine,
                _session_loop(engine),
                arms(session=True),
                select_cycles,
                rounds,
            ),
        ]
    finally:
        await engine.dispose()
    return results


def run_sync(**kwargs: Any) -> list[Result]:
    return asyncio.run(run(**kwargs))
