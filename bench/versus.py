"""The hot path of the working tree against a git revision, side by side in one process.

``python -m bench.versus REV [--cycles N] [--rounds N]``: ``observer/pool.py`` and
``observer/sessions.py`` are loaded as they are at ``REV`` and as they are now; the arms (bare,
observer at REV, observer now; outside and inside a request scope; ORM sessions) alternate on
one engine and one connection, like the checkout benchmark. For before/after figures of a
hot-path change.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

import observer.core
from bench.checkout import (
    SELECT_1,
    Arm,
    _bench,
    _cycles,
    _no_count,
    _no_detach,
    _nothing,
    _session_loop,
    _sync_cycles,
    _sync_session_loop,
)
from bench.common import (
    PgServer,
    create_database,
    drop_database,
    pin,
    pin_backends_async,
    pinning_plan,
)
from observer import Observer
from observer.context import RequestScope, current_request

ROOT = Path(__file__).resolve().parent.parent


def _load(rev: str, name: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:observer/{name}.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"observer._at_rev_{name}")
    module.__file__ = str(ROOT / "observer" / f"{name}.py")  # counts as library code (origin)
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def _arm(label: str, classes: tuple[Any, Any], in_request: bool) -> Arm:
    pool_tracker, session_tracker = classes

    def attach(engine: AsyncEngine) -> Any:
        saved = observer.core.PoolTracker, observer.core.SessionTracker
        observer.core.PoolTracker, observer.core.SessionTracker = pool_tracker, session_tracker
        try:
            obs = Observer(registry=CollectorRegistry())
            obs.watch(engine, name="bench")
        finally:
            observer.core.PoolTracker, observer.core.SessionTracker = saved
        token = current_request.set(RequestScope(route="/bench")) if in_request else None
        return obs, token

    def detach(state: Any) -> None:
        obs, token = state
        if token is not None:
            current_request.reset(token)
        obs.close()

    def counted(state: Any) -> float | None:
        value: float | None = state[0].registry.get_sample_value(
            "sqlalchemy_pool_checkouts_total", {"pool": "bench"}
        )
        return value

    return Arm(label, attach, detach, counted)


async def _run(
    server: PgServer, database: str, rev: str, cycles: int, rounds: int, pg_core: int | None
) -> None:
    engine = create_async_engine(server.url(database), pool_size=5)
    try:
        async with engine.connect() as conn:
            await conn.execute(SELECT_1)
        if pg_core is not None:
            await pin_backends_async(server, database, pg_core)
        old = (_load(rev, "pool").PoolTracker, _load(rev, "sessions").SessionTracker)
        new = (observer.core.PoolTracker, observer.core.SessionTracker)
        bare = Arm("bare", _nothing, _no_detach, _no_count)
        for name, loop, n, in_request_arms in (
            ("cycle", _cycles, cycles, True),
            ("session", _session_loop(engine), max(1, cycles // 10), False),
        ):
            arms = [bare, _arm(f"observer @ {rev}", old, False), _arm("observer now", new, False)]
            if in_request_arms:
                arms += [
                    _arm(f"observer @ {rev}, in a request", old, True),
                    _arm("observer now, in a request", new, True),
                ]
            _print(name, n, rounds, await _bench(name, "", engine, loop, arms, n, rounds))
        sync_engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=5)
        for name, loop, n in (
            ("cycle (sync, SQLite)", _sync_cycles, cycles),
            ("session (sync, SQLite)", _sync_session_loop(sync_engine), max(1, cycles // 4)),
        ):
            arms = [bare, _arm(f"observer @ {rev}", old, False), _arm("observer now", new, False)]
            arms += [
                _arm(f"observer @ {rev}, in a request", old, True),
                _arm("observer now, in a request", new, True),
            ]
            _print(name, n, rounds, await _bench(name, "", sync_engine, loop, arms, n, rounds))
        sync_engine.dispose()
    finally:
        await engine.dispose()


def _print(name: str, n: int, rounds: int, result: Any) -> None:
    print(f"\n{name}: {n:,} cycles x {rounds} rounds")
    print("| arm | wall µs/cycle | min | Δ wall µs | CPU µs/cycle | spread | Δ CPU µs |")
    print("|---|---|---|---|---|---|---|")
    for row in result.summary():
        print(
            f"| {row['arm']} | {row['median_us']:.1f} | {row['min_us']:.1f} | "
            f"{row['delta_us']:+.1f} | {row['cpu_us']:.1f} | "
            f"{row['cpu_spread'] * 100:.0f} % | {row['cpu_delta_us']:+.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.versus", description=__doc__)
    parser.add_argument("rev", help="git revision to compare with (e.g. main, HEAD~1)")
    parser.add_argument("--cycles", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    plan = pinning_plan()
    if plan:
        pin(os.getpid(), plan[0])
    server = PgServer()
    database = create_database(server)
    try:
        pg_core = plan[1] if plan else None
        asyncio.run(_run(server, database, args.rev, args.cycles, args.rounds, pg_core))
    finally:
        drop_database(server, database)


if __name__ == "__main__":
    main()
