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
from time import perf_counter, process_time
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import QueuePool

from bench.common import PgServer, median, pin_backends_async, rotated, spread
from bench.otel import OTel
from observer import Observer
from observer.attribution._scope import RequestScope, current_request

SELECT_1 = text("SELECT 1")


@dataclass
class Arm:
    """What is attached to the engine for one arm, and how to count what it saw."""

    name: str
    attach: Callable[[AsyncEngine], Any]
    detach: Callable[[Any], None]
    counted: Callable[[Any], float | None]


class Flags:
    """SQLAlchemy's execution-event flags. Listening to any engine (``ConnectionEvents``) event
    sets ``_has_events`` on the target for good (removing the listener leaves it set), and with
    it every statement goes through the execution-event dispatch: an arm that listened would
    slow every later arm. Saved before each arm and put back after it."""

    def __init__(self, engine: Any) -> None:
        sync = getattr(engine, "sync_engine", engine)
        self.targets = (Engine, sync, sync.dialect)
        self.saved = [target.__dict__.get("_has_events") for target in self.targets]

    def restore(self) -> None:
        for target, value in zip(self.targets, self.saved, strict=True):
            if value is None:
                if "_has_events" in target.__dict__ and target is not Engine:
                    del target.__dict__["_has_events"]
            else:
                target._has_events = value


# A feature's cost as its own ratio: label -> Observer options, each one more arm ("observer +
# <label>") in the cycle, select1 and session benchmarks, e.g. {"idle gaps": {"<option>": True}}.
FEATURES: dict[str, dict[str, Any]] = {}


def _observer(
    capture_origin: bool,
    in_request: bool = False,
    no_engine_flag: bool = False,
    options: dict[str, Any] | None = None,
) -> tuple[Callable[[AsyncEngine], Any], Callable[[Any], None]]:
    """Attach a fresh Observer. ``in_request``: the cycles run inside a request scope, as the
    middleware sets it (per-route totals are then added once per request, not per checkout);
    otherwise they count as work outside any request (``route="none"``), the costlier path.
    ``no_engine_flag``: the execution-event flags put back right after watching, to show what
    the observer would cost if none of its listeners set them (its live-pools count, which
    needs ``engine_connect``, then stops: a what-if, not a configuration)."""

    def attach(engine: AsyncEngine) -> Observer:
        flags = Flags(engine)
        obs = Observer(
            registry=CollectorRegistry(), capture_origin=capture_origin, **(options or {})
        )
        obs.watch(engine, name="bench")
        if no_engine_flag:
            flags.restore()
        if in_request:
            obs.__dict__["_bench_token"] = current_request.set(RequestScope(route="/bench"))
        return obs

    def detach(obs: Observer) -> None:
        token = obs.__dict__.pop("_bench_token", None)
        if token is not None:
            current_request.reset(token)
        obs.close()

    return attach, detach


def _observer_checkouts(obs: Observer) -> float | None:
    return obs.registry.get_sample_value("sqlalchemy_pool_checkouts_total", {"pool": "bench"})


def _observer_sessions(obs: Observer) -> float | None:
    return obs.registry.get_sample_value("sqlalchemy_orm_sessions_opened_total")


_OTEL = OTel()


def _otel_attach(engine: AsyncEngine) -> Any:
    spans_before = _OTEL.spans()
    return (_OTEL.instrument_sqlalchemy(getattr(engine, "sync_engine", engine)), spans_before)


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
        a, d = _observer(capture_origin=True, no_engine_flag=True)
        found.append(Arm("observer, no execution-event flag (what-if)", a, d, count))
    else:
        a, d = _observer(capture_origin=True)
        found.append(Arm("observer", a, d, count))
        a, d = _observer(capture_origin=True, in_request=True)
        found.append(Arm("observer, in a request", a, d, count))
        a, d = _observer(capture_origin=True, no_engine_flag=True)
        found.append(Arm("observer, no execution-event flag (what-if)", a, d, count))
    for label, options in FEATURES.items():
        a, d = _observer(capture_origin=True, options=options)
        found.append(Arm(f"observer + {label}", a, d, count))
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
    per_round_cpu: dict[str, list[float]] = field(default_factory=dict)  # same, CPU time
    counted: dict[str, list[float | None]] = field(default_factory=dict)

    def summary(self) -> list[dict[str, Any]]:
        """Per arm: wall-clock µs per cycle, and CPU µs per cycle (process CPU time: what the
        process itself spent, without the waits for PostgreSQL nor the time other tenants of
        the machine took from it), each with its Δ against bare in the same round."""
        bare, bare_cpu = self.per_round["bare"], self.per_round_cpu["bare"]
        rows = []
        for arm, values in self.per_round.items():
            cpu = self.per_round_cpu[arm]
            rows.append(
                {
                    "arm": arm,
                    "median_us": median(values),
                    "min_us": min(values),
                    "spread": spread(values),
                    "delta_us": median(v - b for v, b in zip(values, bare, strict=True)),
                    "ratio": median(values) / median(bare),
                    # the headline: median over rounds of (arm / bare in the same round)
                    "ratio_paired": median(v / b for v, b in zip(values, bare, strict=True)),
                    "cpu_ratio_paired": median(v / b for v, b in zip(cpu, bare_cpu, strict=True)),
                    "cpu_us": median(cpu),
                    "cpu_spread": spread(cpu),
                    "cpu_delta_us": median(v - b for v, b in zip(cpu, bare_cpu, strict=True)),
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
        flags = Flags(engine)
        state = arm.attach(engine)
        await loop(engine, max(10, cycles // 10))
        arm.detach(state)
        flags.restore()
    for r in range(rounds):
        for arm_name in rotated([a.name for a in arm_list], r):
            arm = next(a for a in arm_list if a.name == arm_name)
            flags = Flags(engine)
            state = arm.attach(engine)
            gc.collect()
            started, started_cpu = perf_counter(), process_time()
            await loop(engine, cycles)
            elapsed, cpu = perf_counter() - started, process_time() - started_cpu
            counted = arm.counted(state)
            arm.detach(state)
            flags.restore()
            result.per_round.setdefault(arm.name, []).append(elapsed / cycles * 1e6)
            result.per_round_cpu.setdefault(arm.name, []).append(cpu / cycles * 1e6)
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


async def _sync_cycles(engine: Any, n: int) -> None:
    for _ in range(n):
        with engine.connect():
            pass


def _sync_session_loop(engine: Any) -> Callable[[Any, int], Awaitable[None]]:
    factory = sessionmaker(engine, expire_on_commit=False)

    async def run(_: Any, n: int) -> None:
        for _ in range(n):
            with factory() as session:
                session.execute(SELECT_1)

    return run


async def run_cpu_only(*, cycles: int, session_cycles: int, rounds: int) -> list[Result]:
    """The same arms on a sync engine over in-memory SQLite: no network, no event loop, no
    greenlet; pure CPU, so much less noise. It shows the observer's own cost precisely (a lower
    bound of its in-situ cost on the asyncio path, where caches are colder)."""
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=5)
    try:
        return [
            await _bench(
                "cycle (sync, SQLite)",
                "`with engine.connect(): pass` on a sync engine over in-memory SQLite",
                engine,
                _sync_cycles,
                arms(session=False),
                cycles,
                rounds,
            ),
            await _bench(
                "session (sync, SQLite)",
                "`with Session() as s: s.execute(SELECT 1)` on a sync engine over in-memory SQLite",
                engine,
                _sync_session_loop(engine),
                arms(session=True),
                session_cycles,
                rounds,
            ),
        ]
    finally:
        engine.dispose()


def run_sync(**kwargs: Any) -> list[Result]:
    cpu_only = kwargs.pop("cpu_only")
    results = asyncio.run(run(**kwargs))
    return results + asyncio.run(run_cpu_only(**cpu_only))
