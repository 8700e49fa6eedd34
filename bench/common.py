"""Shared helpers: the benchmark database, CPU pinning, statistics, memory readings."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PgServer:
    host: str = os.environ.get("OBSERVER_TEST_PGHOST", "127.0.0.1")
    port: int = int(os.environ.get("OBSERVER_TEST_PGPORT", "5432"))
    user: str = os.environ.get("OBSERVER_TEST_PGUSER", "postgres")

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{database}"


async def _admin(server: PgServer, statement: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(
        host=server.host, port=server.port, user=server.user, database="postgres"
    )
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()


def create_database(server: PgServer) -> str:
    """A fresh database for this benchmark run (dropped by :func:`drop_database`)."""
    name = f"observer_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    return name


def drop_database(server: PgServer, name: str) -> None:
    asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- CPU pinning: the code under test on one core, PostgreSQL and the load generator on the other


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pinning_plan() -> tuple[int, int] | None:
    """(core for the code under test, core for PostgreSQL and the load generator), or None
    when fewer than two cores are available (then nothing is pinned)."""
    available = cpus()
    if len(available) < 2:
        return None
    return available[-1], available[0]


def pin(pid: int, core: int) -> bool:
    """Pin one process (all its threads) to ``core``; False if not allowed."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = [str(pid)]
    ok = True
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), {core})
        except OSError:
            ok = False
    return ok


async def pin_backends_async(server: PgServer, database: str, core: int) -> int:
    """Pin the PostgreSQL backends serving ``database`` (ours alone) to ``core``."""
    rows = await _admin(
        server,
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )
    return sum(1 for row in rows if pin(int(row["pid"]), core))


def pin_backends(server: PgServer, database: str, core: int) -> int:
    return asyncio.run(pin_backends_async(server, database, core))


# -- statistics ------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def spread(values: Sequence[float]) -> float:
    """(max - min) / median, as a fraction: how much identical work varied between rounds."""
    m = median(values)
    return (max(values) - min(values)) / m if m else 0.0


def rotated(arms: Sequence[str], round_no: int) -> list[str]:
    """The arms in a different order each round, so no arm always runs first or last, and
    (reversed every other round) no arm always runs right after the same other arm: an arm
    that leaves the machine hot or busy must not always precede the same arm."""
    k = round_no % len(arms)
    order = list(arms[k:]) + list(arms[:k])
    return order[::-1] if round_no % 2 else order


# -- memory ----------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for dist in (
        "pool-observer",
        "sqlalchemy",
        "asyncpg",
        "greenlet",
        "prometheus-client",
        "fastapi",
        "starlette",
        "uvicorn",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-sqlalchemy",
        "opentelemetry-instrumentation-fastapi",
    ):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "-"
    return found
