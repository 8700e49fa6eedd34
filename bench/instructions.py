"""Instructions per checkout cycle and per ORM session, counted by valgrind: a cost that does
not move with the machine's load.

On a shared 2-core VM, time per cycle (wall or CPU) moves by more than the few percent the
targets are about: other tenants take the core, evict the caches and slow the same code down.
The number of machine instructions the process executes per cycle does not depend on them.
Each arm runs in a fresh process under ``valgrind --tool=cachegrind --cache-sim=no``, twice, with
N and 3N cycles after the same warm-up: the difference divided by 2N is the instructions of one
cycle, with the start-up (imports, connections) cancelled out. Instructions are not time (a
cache miss costs more than an add), but the ratio observer/bare is the part of the work the
observer adds. ``bare (A/A)`` repeats bare: the event loop's polling and the network make the
asyncpg counts vary by about 1 %.

``python -m bench.instructions ARM WORKLOAD N DSN`` is the worker (what valgrind runs).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# workload -> arms; an arm is a label and the worker's ARM argument
WORKLOADS: dict[str, dict[str, str]] = {
    "cycle": {
        "bare": "bare",
        "bare (A/A)": "bare",
        "observer": "observer",
        "observer, in a request": "inreq",
    },
    "select1": {
        "bare": "bare",
        "bare (A/A)": "bare",
        "observer": "observer",
        "observer without held-idle measurement": "noidle",
    },
    "session": {
        "bare": "bare",
        "bare (A/A)": "bare",
        "observer, capture_origin=False": "noorigin",
        "observer, capture_origin=True": "observer",
    },
    # one request through the bench app in process (no sockets): GET /noop, GET /db
    "noop": {
        "bare": "bare",
        "bare (A/A)": "bare",
        "passthrough (the floor)": "passthrough",
        "observer": "observer",
    },
    "db": {
        "bare": "bare",
        "bare (A/A)": "bare",
        "passthrough (the floor)": "passthrough",
        "observer": "observer",
        "observer, capture_origin=False": 'observer{"capture_origin": false}',
        "observer, server_timing=False": 'observer{"server_timing": false}',
        "observer without held-idle measurement": "observer-idle",
        "observer without session tracking": "observer-sessions",
        "observer without the middleware": "observer-middleware",
    },
}
DESCRIPTIONS = {
    "cycle": "`async with engine.connect(): pass`",
    "select1": "`async with engine.connect() as c: await c.execute(SELECT 1)`",
    "session": "`async with Session() as s: await s.execute(SELECT 1)`",
    "noop": "`GET /noop` through the bench app, in process",
    "db": "`GET /db` (one `SELECT 1` through an `AsyncSession`) through the bench app, in process",
}
WARMUP = 300
# The sweeper ticks once a second of wall time, and valgrind runs the process 50 times slower:
# its ticks (flushes, age checks) would count as per-operation work, more of them in the 3N run
# and more on a loaded machine. A real process runs thousands of operations per tick.
QUIET_SWEEPER = {"sweep_interval_seconds": 3600}


def available() -> bool:
    return shutil.which("valgrind") is not None


def _count(arm: str, workload: str, n: int, dsn: str) -> int:
    cmd = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, "-m", "bench.instructions", arm, workload, str(n), dsn,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-4:])} under valgrind failed: {done.stderr[-800:]}")
    match = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in valgrind's output: {done.stderr[-800:]}")
    return int(match.group(1).replace(",", ""))


def run(
    dsn: str,
    cycles: int,
    sessions: int,
    requests: int = 0,
    parallel: int = 2,
    workloads: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Instructions per operation for every arm of every workload (two valgrind processes at
    a time: the counts do not depend on what runs next to them): ``requests`` of ``/db`` and
    twice as many of ``/noop`` (0: as many as ``sessions``)."""
    chosen = {w: a for w, a in WORKLOADS.items() if not workloads or w in workloads}
    requests = requests or sessions
    sizes = {
        "cycle": cycles,
        "select1": requests,  # the asyncpg counts need ~1,000 operations to settle
        "session": sessions,
        "noop": 2 * requests,
        "db": requests,
    }
    jobs = [
        (workload, label, arm, n)
        for workload, arms in chosen.items()
        for label, arm in arms.items()
        for n in (sizes[workload], 3 * sizes[workload])
    ]
    with ThreadPoolExecutor(parallel) as pool:
        counts = list(pool.map(lambda job: _count(job[2], job[0], job[3], dsn), jobs))
    found: dict[str, Any] = {"sizes": sizes, "per_op": {}}
    by_job = {(w, label, n): c for (w, label, _, n), c in zip(jobs, counts, strict=True)}
    for workload, arms in chosen.items():
        n = sizes[workload]
        per_op = {
            label: (by_job[(workload, label, 3 * n)] - by_job[(workload, label, n)]) / (2 * n)
            for label in arms
        }
        found["per_op"][workload] = per_op
    return found


def summary(found: dict[str, Any], workload: str) -> list[dict[str, Any]]:
    per_op = found["per_op"][workload]
    bare = per_op["bare"]
    return [
        {"arm": arm, "instructions": value, "delta": value - bare, "ratio": value / bare}
        for arm, value in per_op.items()
    ]


# -- the worker ----------------------------------------------------------------------------


def _attach(arm: str, engine: Any) -> Any:
    if arm == "bare":
        return None
    from prometheus_client import CollectorRegistry

    from bench.app import ablated
    from observer import Observer
    from observer.attribution._scope import RequestScope, current_request

    with ablated(("idle",) if arm == "noidle" else ()):
        obs = Observer(
            registry=CollectorRegistry(), capture_origin=arm != "noorigin", **QUIET_SWEEPER
        )
        obs.watch(engine, name="bench")
    if arm == "inreq":
        current_request.set(RequestScope(route="/bench"))
    return obs


def _settle() -> None:
    """After the warm-up: everything alive so far is left out of later garbage collections.
    Otherwise whether a full collection (tens of millions of instructions over the import-time
    heap) falls in the N or the 3N run is chance, and moved the per-request counts by 2 %."""
    gc.collect()
    gc.freeze()


async def _requests(arm: str, path: str, n: int, dsn: str) -> None:
    """``n`` requests to ``path`` through the bench app of ``arm``, after a warm-up."""
    from bench.app import create_app
    from bench.asgi import Driver

    # observer{"option": value}: instrument() options; observer-part: a part left out (ablation)
    kind, _, options = arm.partition("{")
    kind, *ablate = kind.split("-")
    chosen = json.loads("{" + options) if options else {}
    if kind == "observer":
        chosen = {**QUIET_SWEEPER, **chosen}
    app, engine = create_app(kind, dsn, tuple(ablate), **chosen)
    driver = Driver(app)
    await driver.many([path] * WARMUP)
    _settle()
    await driver.many([path] * n)
    await engine.dispose()
    if set(driver.statuses) != {200}:
        raise RuntimeError(f"{arm} {path}: statuses {driver.statuses}")


async def _work(arm: str, workload: str, n: int, dsn: str) -> None:
    if workload in ("noop", "db"):
        await _requests(arm, "/" + workload, n, dsn)
        return
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    select_1 = text("SELECT 1")
    engine = create_async_engine(dsn, pool_size=2, max_overflow=0)
    async with engine.connect() as conn:
        await conn.execute(select_1)
    obs = _attach(arm, engine)
    factory = async_sessionmaker(engine, expire_on_commit=False)

    async def one() -> None:
        if workload == "cycle":
            async with engine.connect():
                pass
        elif workload == "select1":
            async with engine.connect() as conn:
                await conn.execute(select_1)
        else:
            async with factory() as session:
                await session.execute(select_1)

    for _ in range(WARMUP):
        await one()
    _settle()
    for _ in range(n):
        await one()
    if obs is not None:
        obs.close()
    await engine.dispose()


if __name__ == "__main__":
    arm_, workload_, n_, dsn_ = sys.argv[1:5]
    asyncio.run(_work(arm_, workload_, int(n_), dsn_))
