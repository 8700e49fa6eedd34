"""The observer of the working tree against a git revision, side by side in one process.

``python -m bench.versus REV [--cycles N] [--rounds N]``: the whole ``observer`` package as it is
at ``REV`` is imported under another name (``observer_at_rev``, from a temporary directory) next
to the package as it is now; the arms (bare, observer at REV, observer now; outside and inside a
request scope; ORM sessions) alternate on one engine and one connection, like the checkout
benchmark. For before/after figures of a hot-path change. (Origin capture treats the old
package's files as library code too: they are under a directory named ``observer_at_rev``.)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

import observer
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

ROOT = Path(__file__).resolve().parent.parent


def _load(rev: str) -> types.ModuleType:
    """The ``observer`` package at ``rev``, importable as ``observer_at_rev``."""
    where = Path(tempfile.mkdtemp(prefix="observer-versus-"))
    archive = subprocess.run(
        ["git", "archive", rev, "observer"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    package = where / "observer_at_rev"
    (where / "observer").rename(package)
    for path in package.rglob("*.py"):
        source = path.read_text()
        source = re.sub(r"\b(from|import) observer\b", r"\1 observer_at_rev", source)
        source = source.replace('"observer.', '"observer_at_rev.')
        path.write_text(source)
    sys.path.insert(0, str(where))
    return importlib.import_module("observer_at_rev")


def _scope_module(package: Any) -> Any:
    """The module holding ``RequestScope`` and ``current_request``, in either layout (flat
    ``observer.context`` before 0.1's package move, ``observer.attribution._scope`` after)."""
    for name in ("attribution._scope", "context"):
        try:
            return importlib.import_module(f"{package.__name__}.{name}")
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(f"no request-scope module in {package.__name__}")


def _arm(label: str, package: Any, in_request: bool) -> Arm:
    def attach(engine: AsyncEngine) -> Any:
        obs = package.Observer(registry=CollectorRegistry())
        obs.watch(engine, name="bench")
        context = _scope_module(package)
        scope = context.RequestScope(route="/bench")
        token = context.current_request.set(scope) if in_request else None
        return obs, (context.current_request, token)

    def detach(state: Any) -> None:
        obs, (variable, token) = state
        if token is not None:
            variable.reset(token)
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
        old = _load(rev)
        new = observer
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
