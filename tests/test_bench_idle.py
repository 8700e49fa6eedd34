"""The held-idle benchmark (``python -m bench.idle``) runs every arm and loop, and each arm really
is what it says: the observer arm measured every checkout's idle time, the what-if arm none.
Nothing here looks at a timing."""

from __future__ import annotations

import asyncio

import pytest

from bench import idle
from tests.helpers import postgres_up

pytestmark = pytest.mark.postgres


def test_the_idle_benchmark_runs_every_arm_and_counts_every_checkout() -> None:
    """On tiny counts, over asyncpg and sync SQLite: four arms per loop, every round; the
    observer arm's idle histogram has one observation per checkout, the what-if arm's checkouts
    are counted while its idle histogram stays empty; the cost table has every row."""
    assert postgres_up()
    server = idle.PgServer()
    database = idle.create_database(server)
    try:
        results = asyncio.run(idle.run(server, database, cycles=6, rounds=2, sqlite_cycles=10))
    finally:
        idle.drop_database(server, database)
    assert set(results) == {
        "cycle",
        "select1",
        "select10",
        "cycle (sync, SQLite)",
        "select1 (sync, SQLite)",
        "select10 (sync, SQLite)",
    }
    for name, result in results.items():
        assert set(result.per_round) == {"bare", "bare (A/A)", "observer", idle.NO_IDLE}
        assert all(len(values) == 2 for values in result.per_round.values())
        cycles = result.cycles
        assert result.counted["observer"] == [cycles, cycles], name  # idle gaps measured
        assert result.counted[idle.NO_IDLE] == [cycles, cycles], name  # checkouts counted
    report = idle.markdown(results)
    assert report.count("| asyncpg, ") == 2
    assert report.count("| sync SQLite, ") == 2


def test_the_what_if_arm_measures_no_idle_time() -> None:
    """The what-if arm's Observer keeps its dialect's own steps and observes no idle gap."""
    from sqlalchemy import create_engine, text

    engine = create_engine("sqlite://")
    try:
        obs = idle._attach(idle=False)(engine)
        assert not {"do_execute", "do_rollback"} & set(vars(engine.dialect))
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert idle._gaps(obs) == 0.0
        assert idle._checkouts(obs) == 1.0
        obs.close()
    finally:
        engine.dispose()
