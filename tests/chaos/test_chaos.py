"""Chaos: faults under load, each run twice (without and with the observer).

Every scenario checks that the app's responses are the same in both arms, that no exception in
the server's log was raised in observer code, and (observer arm) that once traffic stops the
gauges are exact and the counters add up (``harness.violations``). Each phase is built so that
its outcome does not depend on timing: faults are injected while a known number of requests
hold connections, or while no request is in flight, so the two arms are compared exactly.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.chaos import harness
from tests.chaos.harness import SCALE, Outcomes, Server, load
from tests.helpers import require
from tests.helpers.pgcluster import PgCluster, available
from tests.helpers.processes import free_port

pytestmark = [pytest.mark.chaos, pytest.mark.postgres]

Phases = dict[str, Outcomes]
Scenario = Callable[[Server], Phases]


def _settled_with_server(
    server: Server, database_url: str, broken_checkin: bool
) -> dict[str, float]:
    """The settled figures once the server's view agrees: every connection opened and not
    closed is a backend. Closes are counted by deferred work (within a sweep, 0.1 s, not at
    once), so the two are compared until they agree or 10 s have passed."""
    deadline = time.monotonic() + 10
    while True:
        figures = harness.settle(
            server, harness.pool_label(database_url), broken_checkin=broken_checkin
        )
        figures["server_backends"] = asyncio.run(backends(database_url, "pool-observer"))
        if figures["opened"] - figures["closed"] == figures["server_backends"]:
            return figures
        if time.monotonic() > deadline:
            raise AssertionError(f"opened - closed != the server's backends: {figures}")
        time.sleep(0.1)


def run_arms(
    scenario: Scenario,
    database_url: str,
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    broken_checkin: bool = False,
    workers: int = 1,
    settle: Callable[[Server], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` on a bare server and on an instrumented one; compare and check."""
    results: dict[bool, Phases] = {}
    figures: dict[str, float] = {}
    logs: dict[bool, str] = {}
    for with_observer in (False, True):
        log_path = tmp_path / f"server-{'observer' if with_observer else 'bare'}.log"
        server = harness.start_server(
            database_url, log_path, observer=with_observer, env=env, workers=workers
        )
        try:
            results[with_observer] = scenario(server)
            if with_observer:
                if settle is not None:
                    figures = settle(server)
                else:
                    figures = _settled_with_server(server, database_url, broken_checkin)
        finally:
            harness.stop_server(server)
        logs[with_observer] = server.log()
    bare, observed = results[False], results[True]
    assert observed == bare, f"responses differ: without observer {bare}, with {observed}"
    for log in logs.values():
        assert harness.observer_origins(log) == [], log
    hook_errors = logs[True].count("observer.hook_error")
    assert hook_errors == (1 if broken_checkin else 0), logs[True]
    assert harness.exception_lines(logs[True]) == harness.exception_lines(logs[False])
    requests = sum(sum(outcomes.values()) for outcomes in observed.values())
    return {
        "phases": {name: dict(outcomes) for name, outcomes in observed.items()},
        "requests": requests,
        "errors_from_observer": 0,
        "figures": figures,
    }


async def terminate_backends(database_url: str, application_name: str) -> int:
    """``pg_terminate_backend`` every connection of the app (by ``application_name``)."""
    url = make_url(database_url)
    conn = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database="postgres"
    )
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND application_name = $2",
            url.database,
            application_name,
        )
    finally:
        await conn.close()
    return len(rows)


async def backends(database_url: str, application_name: str) -> int:
    """How many server connections the app has (the server's view)."""
    url = make_url(database_url)
    conn = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database="postgres"
    )
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
            url.database,
            application_name,
        )
    finally:
        await conn.close()
    return n


def app_name(server: Server) -> str:
    """The chaos app has the observer name its connections ``pool-observer``; bare asyncpg none."""
    return "pool-observer" if server.observer else ""


def in_flight(
    server: Server, paths: list[str], fault: Callable[[], None], *, hold: int
) -> Outcomes:
    """Send ``paths`` at once; once the app holds ``hold`` connections, inject ``fault``."""

    async def run() -> Outcomes:
        async with httpx.AsyncClient(base_url=server.url) as client:
            tasks = [asyncio.create_task(harness.fetch(client, path)) for path in paths]
            await asyncio.to_thread(harness.wait_checked_out, server, hold)
            await asyncio.to_thread(fault)
            return collections.Counter(await asyncio.gather(*tasks))

    return asyncio.run(run())


def test_postgres_restarted_during_load(tmp_path: Path) -> None:
    """PostgreSQL goes down while requests hold connections, stays down for a while, and comes
    back: the same requests fail with and without the observer, and the pool recovers."""
    require(available(), "PostgreSQL server binaries (or the postgres user) are missing")
    cluster = PgCluster(settings={"max_connections": "40"})
    try:
        cluster.start()
        url = cluster.url()

        def scenario(server: Server) -> Phases:
            if not cluster.running:
                cluster.start()
            phases = {"warm": load(server, ["/work"] * 20 * SCALE, concurrency=4)}
            phases["in_flight"] = in_flight(server, ["/sleep?seconds=5"] * 4, cluster.stop, hold=4)
            phases["down"] = load(server, ["/work"] * 5, concurrency=1)
            cluster.start()
            phases["back"] = load(server, ["/work"] * 20 * SCALE, concurrency=4)
            return phases

        result = run_arms(scenario, url, tmp_path)
    finally:
        cluster.remove()
    assert result["phases"]["in_flight"] != {"200": 4}
    assert result["phases"]["back"] == {"200": 20 * SCALE}
    harness.record("postgres_restart", faults=2, **result)


def test_backends_terminated(chaos_url: str, tmp_path: Path) -> None:
    """``pg_terminate_backend`` of the app's connections, busy and then idle: one error per
    killed busy connection, one for the first use of a killed idle pool, then recovery."""

    def scenario(server: Server) -> Phases:
        name = app_name(server)
        phases = {"warm": load(server, ["/work"] * 20 * SCALE, concurrency=4)}

        def kill() -> None:
            assert asyncio.run(terminate_backends(chaos_url, name)) >= 4

        phases["busy"] = in_flight(server, ["/sleep?seconds=5"] * 4, kill, hold=4)
        phases["after_busy"] = load(server, ["/work"] * 10 * SCALE, concurrency=1)
        assert asyncio.run(terminate_backends(chaos_url, name)) >= 1  # idle in the pool
        harness.wait_connections_closed(server)  # the app has read each killed backend's end
        phases["after_idle"] = load(server, ["/work"] * 10 * SCALE, concurrency=1)
        return phases

    def settle(server: Server) -> dict[str, float]:
        figures = harness.settle(server, harness.pool_label(chaos_url))
        deadline = time.monotonic() + 10
        while True:  # closes are counted by deferred work: within a sweep (0.1 s), not at once
            live = asyncio.run(backends(chaos_url, "pool-observer"))
            if figures["opened"] - figures["closed"] == live == figures["checked_in"]:
                return figures
            if time.monotonic() > deadline:
                raise AssertionError(f"opened - closed == {live} live == checked_in: {figures}")
            time.sleep(0.1)
            figures = harness.settle(server, harness.pool_label(chaos_url))

    result = run_arms(scenario, chaos_url, tmp_path, settle=settle)
    assert result["phases"]["busy"] != {"200": 4}
    assert sum(result["phases"]["after_idle"].values()) - result["phases"]["after_idle"]["200"] == 1
    harness.record("backends_terminated", faults=2, **result)


async def _abandon_stream(base_url: str) -> str:
    async with (
        httpx.AsyncClient(base_url=base_url) as client,
        client.stream("GET", "/stream") as response,
    ):
        async for _ in response.aiter_raw():
            break  # leave after the first chunk: the connection is closed under the server
    return f"{response.status_code} abandoned"


def test_clients_disconnect_mid_request(chaos_url: str, tmp_path: Path) -> None:
    """Clients give up mid-request (timeouts on plain endpoints; streaming responses left after
    the first chunk, which Starlette cancels): nothing stays checked out, nothing leaks."""

    def scenario(server: Server) -> Phases:
        phases = {
            "timeouts": load(server, ["/sleep?seconds=0.5"] * 8 * SCALE, concurrency=4, timeout=0.1)
        }

        async def streams() -> Outcomes:
            return collections.Counter(
                await asyncio.gather(*(_abandon_stream(server.url) for _ in range(6 * SCALE)))
            )

        phases["streams"] = asyncio.run(streams())
        time.sleep(0.6)  # the abandoned /sleep requests finish server-side
        phases["after"] = load(server, ["/work"] * 10 * SCALE, concurrency=4)
        return phases

    result = run_arms(scenario, chaos_url, tmp_path)
    assert result["phases"]["timeouts"] == {"ReadTimeout": 8 * SCALE}
    assert result["phases"]["streams"] == {"200 abandoned": 6 * SCALE}
    harness.record("clients_disconnect", faults=14 * SCALE, **result)


def test_pool_exhausted(chaos_url: str, tmp_path: Path) -> None:
    """Six requests at once on a pool of two (pool_timeout 0.5 s, each holds 1.2 s), round after
    round: two succeed and four time out each round, in both arms; the observer counts each."""
    rounds = 2 * SCALE
    env = {"CHAOS_POOL_SIZE": "2", "CHAOS_MAX_OVERFLOW": "0", "CHAOS_POOL_TIMEOUT": "0.5"}

    def scenario(server: Server) -> Phases:
        phases = {}
        for n in range(rounds):
            phases[f"round{n}"] = load(server, ["/sleep?seconds=1.2"] * 6, concurrency=6)
        phases["after"] = load(server, ["/work"] * 10, concurrency=2)
        return phases

    result = run_arms(scenario, chaos_url, tmp_path, env=env)
    for n in range(rounds):
        assert result["phases"][f"round{n}"] == {"200": 2, "500 TimeoutError": 4}
    assert result["figures"]["timeouts"] == 4 * rounds
    harness.record("pool_exhausted", faults=4 * rounds, **result)


def test_engine_disposed_during_traffic(chaos_url: str, tmp_path: Path) -> None:
    """``engine.dispose()`` while requests hold connections and others arrive: every request
    succeeds, and connections still out of the old pool are counted until they come back."""
    rounds = 2 * SCALE

    def scenario(server: Server) -> Phases:
        phases = {}
        for n in range(rounds):

            def dispose() -> None:
                httpx.post(server.url + "/admin/dispose", timeout=10).raise_for_status()

            phases[f"round{n}"] = in_flight(
                server, ["/sleep?seconds=0.8"] * 4 + ["/work"] * 10, dispose, hold=4
            )
        # Connections returned to a replaced pool stay open there (dispose() closes only the
        # idle ones) until that pool is garbage-collected: how many are left depends on when
        # the collector runs, so it is not compared between arms; the observer arm checks
        # opened - closed == idle + out == the server's count (run_arms).
        return phases

    result = run_arms(scenario, chaos_url, tmp_path)
    assert all(result["phases"][f"round{n}"] == {"200": 14} for n in range(rounds))
    harness.record("engine_disposed", faults=rounds, **result)


def test_observer_hook_raises(chaos_url: str, tmp_path: Path) -> None:
    """The observer's checkin hook raises on every call: the app answers exactly as without the
    observer, the error is counted per call and logged once, the pool gauges stay exact."""

    def scenario(server: Server) -> Phases:
        return {
            "load": load(server, ["/work"] * 40 * SCALE, concurrency=4),
            "exhaust": load(server, ["/sleep?seconds=0.05"] * 12, concurrency=6),
        }

    result = run_arms(
        scenario, chaos_url, tmp_path, env={"CHAOS_BREAK_HOOK": "checkin"}, broken_checkin=True
    )
    assert result["phases"]["load"] == {"200": 40 * SCALE}
    assert result["figures"]["hook_errors"] == result["figures"]["checkouts"] > 0
    harness.record("hook_raises", faults=int(result["figures"]["hook_errors"]), **result)


def _workers(server: Server) -> set[int]:
    """The uvicorn supervisor's worker processes (spawned children, not the resource tracker)."""
    pid = server.proc.pid
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(p) for p in f.read().split()]
    except OSError:
        return set()
    found = set()
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            found.add(child)
    return found


def test_worker_killed_and_restarted(chaos_url: str, tmp_path: Path) -> None:
    """``uvicorn --workers 2`` with PROMETHEUS_MULTIPROC_DIR: a worker is SIGKILLed and the
    supervisor starts another. Requests succeed in both arms; the metrics (served on a
    ``metrics_port`` both workers share, behind a ``metrics_token``) add up the workers'
    counters (the dead one's included) and show gauges of live workers only, all at zero."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    killed: list[int] = []

    def scenario(server: Server) -> Phases:
        deadline = time.monotonic() + 20
        while len(_workers(server)) < 2:
            assert time.monotonic() < deadline, "two workers never started"
            time.sleep(0.1)
        phases = {"before": load(server, ["/work"] * 40 * SCALE, concurrency=4)}
        victim = min(_workers(server))
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
        deadline = time.monotonic() + 20
        while True:
            workers = _workers(server)
            if len(workers) == 2 and victim not in workers:
                break
            assert time.monotonic() < deadline, f"the supervisor did not replace {victim}"
            time.sleep(0.1)
        time.sleep(1.5)  # the new worker imports the app
        phases["after"] = load(server, ["/work"] * 40 * SCALE, concurrency=4)
        return phases

    def settle(server: Server) -> dict[str, float]:
        pool = harness.pool_label(chaos_url)
        port = server.env["OBSERVER_METRICS_PORT"]
        anonymous = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert anonymous.status_code == 401
        deadline = time.monotonic() + 10
        while True:
            samples = server.metrics()
            pids = {
                dict(labels).get("pid")
                for (name, labels), _ in samples.items()
                if name == "sqlalchemy_pool_checked_out_connections"
            }
            checked_out = [
                v
                for (name, _), v in samples.items()
                if name == "sqlalchemy_pool_checked_out_connections"
            ]
            figures = harness.invariants(samples, pool)
            figures["checked_out"] = sum(checked_out)
            problems = harness.violations(figures)
            if str(killed[-1]) in pids:
                problems.append(f"the killed worker {killed[-1]} still has gauges: {pids}")
            # pools are counted once used; the new worker may not have served a request yet
            if (harness.value(samples, "sqlalchemy_pools") or 0) not in (1, 2):
                problems.append(f"sqlalchemy_pools {harness.value(samples, 'sqlalchemy_pools')}")
            if not problems:
                assert figures["checkouts"] == 80 * SCALE
                return figures
            if time.monotonic() > deadline:
                raise AssertionError("\n".join(problems))
            time.sleep(0.2)

    # the metrics on a port of their own that both workers share, behind a token
    metrics_port = str(free_port())
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
        "OBSERVER_METRICS_PORT": metrics_port,
        "OBSERVER_METRICS_PORT_SHARED": "1",  # the workers opt in to sharing it
        "OBSERVER_METRICS_TOKEN": "chaos-token-0123456789",
    }
    result = run_arms(scenario, chaos_url, tmp_path, env=env, workers=2, settle=settle)
    assert result["phases"] == {"before": {"200": 40 * SCALE}, "after": {"200": 40 * SCALE}}
    harness.record("worker_killed", faults=1, **result)
