"""observer sidecar against a real PostgreSQL and real worker processes."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from observer.cli import main
from observer.sidecar import Sidecar, SidecarConfig, check_health
from tests.helpers import PG_HOST, PG_PORT, PG_USER, require, throwaway_database
from tests.helpers.pgcluster import PgCluster, available
from tests.helpers.processes import free_port
from tests.helpers.scrape import Samples, reaches, scrape, value, wait_for

PASSWORD = "Sidecar-Secret-PW"


@pytest.fixture
def app_name() -> str:
    """An application_name nobody else uses, so other tests' connections never count."""
    return f"sidecar-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sidecars() -> Iterator[list[Sidecar]]:
    """Sidecars a test starts; all closed (threads joined) at the end."""
    started: list[Sidecar] = []
    yield started
    for sidecar in started:
        sidecar.close()


def start(sidecars: list[Sidecar], **config: object) -> str:
    """Start a sidecar on a free local port, polling fast; returns its /metrics URL."""
    settings: dict[str, object] = {
        "address": "127.0.0.1",
        "port": 0,
        "poll_interval": 0.1,
        "statement_timeout_ms": 100,
        "connect_timeout": 2,
        **config,
    }
    sidecar = Sidecar(SidecarConfig(**settings)).start()
    sidecars.append(sidecar)
    return f"http://127.0.0.1:{sidecar.port}/metrics"


def dsn(database: str) -> str:
    """A plain libpq DSN of the shared test server."""
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


@pytest.mark.postgres
async def test_idle_in_transaction_shows_and_clears(
    pg_database: str, pg_url: str, app_name: str, sidecars: list[Sidecar]
) -> None:
    """A connection left idle in a transaction is counted with its age, and gone after ROLLBACK."""
    url = start(sidecars, database_url=pg_url, application_name=app_name)
    idle = dict(datname=pg_database, state="idle in transaction", application_name=app_name)
    conn = await asyncpg.connect(dsn(pg_database), server_settings={"application_name": app_name})
    try:
        began = time.monotonic()
        await conn.execute("BEGIN; SELECT 1")
        await asyncio.sleep(0.5)
        samples = await asyncio.to_thread(
            wait_for,
            url,
            reaches("pg_observer_idle_in_transaction_max_seconds", 0.5, application_name=app_name),
            what="idle in transaction for 0.5 s",
        )
        age = time.monotonic() - began
        assert value(samples, "pg_stat_activity_count", **idle) == 1
        for name in ("pg_observer_idle_in_transaction_max_seconds",
                     "pg_observer_oldest_transaction_seconds"):  # fmt: skip
            assert 0.5 <= value(samples, name, application_name=app_name) <= age + 0.1
        assert 0.5 <= value(samples, "pg_stat_activity_max_tx_duration", **idle) <= age + 0.1
        assert value(samples, "pg_up") == 1
        await conn.execute("ROLLBACK")
        samples = await asyncio.to_thread(
            wait_for, url, lambda s: value(s, "pg_stat_activity_count", **idle) == 0
        )
        assert value(samples, "pg_stat_activity_count", **{**idle, "state": "idle"}) == 1
        assert (
            value(samples, "pg_observer_idle_in_transaction_max_seconds", application_name=app_name)
            == 0
        )
        assert (
            value(samples, "pg_observer_oldest_transaction_seconds", application_name=app_name) == 0
        )
        assert value(samples, "pg_stat_activity_max_tx_duration", **idle) == 0
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_lock_wait_shows_and_clears(
    pg_database: str, pg_url: str, app_name: str, sidecars: list[Sidecar]
) -> None:
    """A backend queued behind ACCESS EXCLUSIVE is counted with its wait; 0 once the lock goes."""
    url = start(sidecars, database_url=pg_url, application_name=app_name)
    table = f"locked_{uuid.uuid4().hex[:8]}"
    holder = await asyncpg.connect(
        dsn(pg_database), server_settings={"application_name": "migration"}
    )
    waiter = await asyncpg.connect(dsn(pg_database), server_settings={"application_name": app_name})
    try:
        await holder.execute(f"CREATE TABLE {table} (id int)")
        await holder.execute(f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        began = time.monotonic()
        blocked = asyncio.ensure_future(waiter.fetch(f"SELECT * FROM {table}"))
        await asyncio.sleep(0.5)
        samples = await asyncio.to_thread(
            wait_for,
            url,
            reaches("pg_observer_lock_wait_max_seconds", 0.5, datname=pg_database),
            what="a lock wait of 0.5 s",
        )
        waited = time.monotonic() - began
        assert value(samples, "pg_observer_lock_waiting_backends", datname=pg_database) == 1
        assert (
            0.5
            <= value(samples, "pg_observer_lock_wait_max_seconds", datname=pg_database)
            <= waited + 0.1
        )
        active = dict(datname=pg_database, state="active", application_name=app_name)
        assert value(samples, "pg_stat_activity_count", **active) == 1
        assert not blocked.done()
        await holder.execute("ROLLBACK")
        assert await blocked == []
        samples = await asyncio.to_thread(
            wait_for,
            url,
            lambda s: value(s, "pg_observer_lock_waiting_backends", datname=pg_database) == 0,
        )
        assert value(samples, "pg_observer_lock_wait_max_seconds", datname=pg_database) == 0
    finally:
        await holder.execute(f"DROP TABLE IF EXISTS {table}")
        await holder.close()
        await waiter.close()


@pytest.mark.postgres
def test_database_down_reports_pg_up_0_and_keeps_serving(
    sidecars: list[Sidecar], caplog: pytest.LogCaptureFixture
) -> None:
    """Stopping PostgreSQL turns pg_up to 0 (no stale server series), /healthz stays 200; back to 1 after."""  # noqa: E501
    require(available(), "PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    caplog.set_level(logging.INFO, logger="observer.sidecar")
    pg = PgCluster()
    try:
        pg.start()
        url = start(sidecars, database_url=pg.url(password=PASSWORD))
        up = wait_for(url, lambda s: value(s, "pg_up") == 1, what="pg_up 1")
        assert value(up, "pg_observer_poll_errors_total") == 0
        pg.stop()
        down = wait_for(url, lambda s: value(s, "pg_up") == 0, what="pg_up 0")
        assert (value(down, "pg_observer_poll_errors_total") or 0) >= 1
        assert not any(name.startswith("pg_stat_activity") for name, _ in down)
        assert not any(name.startswith("pg_observer_lock") for name, _ in down)
        with urllib.request.urlopen(url.replace("/metrics", "/healthz"), timeout=5) as health:
            assert health.status == 200
        pg.start()
        again = wait_for(url, lambda s: value(s, "pg_up") == 1, what="pg_up 1 after restart")
        assert value(again, "pg_stat_activity_count", datname="postgres", state="idle",
                     application_name="") == 0  # fmt: skip
    finally:
        pg.remove()
    messages = [r.getMessage() for r in caplog.records if r.name == "observer.sidecar"]
    assert any(m.startswith("database unreachable from the sidecar: ") for m in messages)
    assert any(m.startswith("database reachable again from the sidecar") for m in messages)
    assert not any(PASSWORD in m for m in messages)


def datnames(samples: Samples, name: str) -> set[str]:
    """The databases a metric of the server view has series for."""
    return {dict(labels)["datname"] for (sample, labels) in samples if sample == name}


@pytest.mark.postgres
def test_the_server_view_covers_the_urls_database_unless_told(
    pg_database: str, pg_url: str, app_name: str, sidecars: list[Sidecar]
) -> None:
    """By default only the database of the URL has pg_stat_activity_count and lock-wait series
    (not every database of the cluster); ``--databases '*'`` covers them all, names pick some."""
    with throwaway_database("sidecar_a") as one, throwaway_database("sidecar_b") as two:
        ours = start(sidecars, database_url=pg_url, application_name=app_name)
        samples = wait_for(ours, lambda s: value(s, "pg_up") == 1)
        assert datnames(samples, "pg_stat_activity_count") == {pg_database}
        assert datnames(samples, "pg_observer_lock_waiting_backends") == {pg_database}
        counts = [k for k in samples if k[0] == "pg_stat_activity_count"]
        assert len(counts) == 6  # one per state
        assert value(samples, "pg_stat_activity_count", datname=pg_database, state="idle",
                     application_name=app_name) == 0  # fmt: skip
        everything = start(sidecars, database_url=pg_url, databases=("*",))
        samples = wait_for(everything, lambda s: value(s, "pg_up") == 1)
        assert {pg_database, one, two} <= datnames(samples, "pg_stat_activity_count")
        assert {pg_database, one, two} <= datnames(samples, "pg_observer_lock_waiting_backends")
        named = start(sidecars, database_url=pg_url, databases=(one, two))
        samples = wait_for(named, lambda s: value(s, "pg_up") == 1)
        assert datnames(samples, "pg_stat_activity_count") == {one, two}
        assert datnames(samples, "pg_observer_lock_waiting_backends") == {one, two}


WORKER = textwrap.dedent(
    """
    import sys
    from prometheus_client import Counter, Gauge

    jobs, checked_out = int(sys.argv[1]), int(sys.argv[2])
    Counter("worker_jobs", "Jobs done.", ["kind"]).labels("import").inc(jobs)
    Gauge("worker_checked_out", "Per worker.", multiprocess_mode="liveall").set(checked_out)
    Gauge("worker_checked_out_sum", "All workers.", multiprocess_mode="livesum").set(checked_out)
    print("ready", flush=True)
    sys.stdin.readline()  # exit when told
    """
)


def spawn_worker(directory: Path, jobs: int, checked_out: int) -> subprocess.Popen[str]:
    """A real worker process writing multiprocess metric files, ready when this returns."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(jobs), str(checked_out)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    assert worker.stdout.readline() == "ready\n"
    return worker


def test_two_workers_aggregate_and_a_dead_one_is_pruned(
    tmp_path: Path, sidecars: list[Sidecar]
) -> None:
    """Counters of 2 worker processes add up; once one exits, its live gauges leave, its counts stay."""  # noqa: E501
    workers = [spawn_worker(tmp_path, 3, 2), spawn_worker(tmp_path, 4, 5)]
    try:
        url = start(sidecars, multiproc_dir=str(tmp_path), prune_dead_workers=True)
        first, second = scrape(url), scrape(url)
        assert first == second  # a fresh registry per scrape: nothing counted twice
        pids = [str(w.pid) for w in workers]
        assert value(first, "worker_jobs_total", kind="import") == 7
        assert value(first, "worker_checked_out", pid=pids[0]) == 2
        assert value(first, "worker_checked_out", pid=pids[1]) == 5
        assert value(first, "worker_checked_out_sum") == 7
        assert value(first, "observer_sidecar_multiproc_files") == 6
        assert value(first, "observer_sidecar_dead_workers_pruned_total") == 0
        assert value(first, "pg_up") is None  # no database configured: no server view

        workers[0].communicate("exit\n", timeout=10)
        after = scrape(url)
        assert value(after, "worker_jobs_total", kind="import") == 7
        assert value(after, "worker_checked_out", pid=pids[0]) is None
        assert value(after, "worker_checked_out", pid=pids[1]) == 5
        assert value(after, "worker_checked_out_sum") == 5
        assert value(after, "observer_sidecar_multiproc_files") == 4
        assert value(after, "observer_sidecar_dead_workers_pruned_total") == 1
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.communicate("exit\n", timeout=10)


def test_without_pruning_a_dead_workers_live_gauge_stays(
    tmp_path: Path, sidecars: list[Sidecar]
) -> None:
    """With pruning off (--no-prune-dead-workers), a dead worker's liveall series stays until
    the dir is wiped."""
    worker = spawn_worker(tmp_path, 1, 9)
    worker.communicate("exit\n", timeout=10)
    url = start(sidecars, multiproc_dir=str(tmp_path), prune_dead_workers=False)
    samples = scrape(url)
    assert value(samples, "worker_checked_out", pid=str(worker.pid)) == 9
    assert value(samples, "observer_sidecar_dead_workers_pruned_total") == 0


def test_unknown_path_is_404_and_health_is_200(tmp_path: Path, sidecars: list[Sidecar]) -> None:
    """/healthz answers 200 ok, other paths 404, and check_health agrees with the server."""
    url = start(sidecars, multiproc_dir=str(tmp_path))
    base = url.removesuffix("/metrics")
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
        assert (response.status, response.read()) == (200, b"ok\n")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{base}/other", timeout=5)
    assert missing.value.code == 404
    missing.value.close()
    assert check_health(SidecarConfig(address="0.0.0.0", port=sidecars[0].port)) == 0
    assert check_health(SidecarConfig(port=free_port())) == 1


@pytest.mark.postgres
def test_cli_process_serves_from_env_and_stops_on_sigterm(pg_url: str, tmp_path: Path) -> None:
    """The real ``observer sidecar`` process, configured by OBSERVER_* variables, serves, passes
    its own --check-health, exits 0 on SIGTERM and never prints the password."""
    port = free_port()
    env = {
        **os.environ,
        "OBSERVER_SIDECAR_DATABASE_URL": pg_url.replace(f"{PG_USER}@", f"{PG_USER}:{PASSWORD}@"),
        "OBSERVER_SIDECAR_PORT": str(port),
        "OBSERVER_SIDECAR_POLL_INTERVAL": "0.2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    command = [sys.executable, "-m", "observer.cli", "sidecar"]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        samples: Samples = {}
        deadline = time.monotonic() + 20
        while value(samples, "pg_up") != 1:
            assert time.monotonic() < deadline, "the sidecar did not report pg_up 1"
            try:
                samples = scrape(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                time.sleep(0.1)
        assert value(samples, "observer_sidecar_multiproc_files") == 0
        health = subprocess.run(
            [*command, "--check-health"], env=env, timeout=30, check=False, capture_output=True
        )
        assert health.returncode == 0
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert f"serving /metrics and /healthz on http://127.0.0.1:{port}" in err
    database = pg_url.rsplit("/", 1)[1]
    assert f"(database: postgresql://{PG_HOST}:{PG_PORT}/{database}, multiproc dir: " in err
    assert PASSWORD not in err


def documented_metrics() -> set[str]:
    """Metric names in the table of docs/sidecar.md."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "sidecar.md").read_text()
    table = doc.split("## Metrics", 1)[1]
    return set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE))


@pytest.mark.postgres
@pytest.mark.promtool
def test_every_exported_metric_is_documented_and_passes_promtool(
    pg_url: str, tmp_path: Path, sidecars: list[Sidecar], promtool: str
) -> None:
    """The sidecar's own metrics are exactly the documented ones, and promtool finds only the
    postgres_exporter name it always flags."""
    url = start(sidecars, database_url=pg_url, multiproc_dir=str(tmp_path))
    wait_for(url, lambda s: value(s, "pg_up") == 1, what="pg_up 1")
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    families = {f.name for f in text_string_to_metric_families(text)}
    counters = {f.name for f in text_string_to_metric_families(text) if f.type == "counter"}
    exported = {f"{name}_total" if name in counters else name for name in families}
    assert exported == documented_metrics()
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.stdout + result.stderr == (
        'pg_stat_activity_count non-histogram and non-summary metrics should not have "_count" '
        "suffix\n"
    )


def test_openmetrics_is_served_when_asked(tmp_path: Path, sidecars: list[Sidecar]) -> None:
    """A scraper that accepts OpenMetrics gets it (content type and the closing # EOF)."""
    url = start(sidecars, multiproc_dir=str(tmp_path))
    request = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text"})
    with urllib.request.urlopen(request, timeout=5) as response:
        content_type = response.headers["Content-Type"]
        body = response.read().decode()
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")


def test_a_hung_database_neither_blocks_scrapes_nor_the_poller(sidecars: list[Sidecar]) -> None:
    """A server that accepts TCP but never answers: scrapes stay fast, the poll gives up after
    the connect timeout and reports pg_up 0."""
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)  # the kernel accepts; nobody ever answers the startup packet
        port = blackhole.getsockname()[1]
        url = start(
            sidecars, database_url=f"postgresql://postgres@127.0.0.1:{port}/x", connect_timeout=2
        )
        began = time.monotonic()
        during = scrape(url)
        assert time.monotonic() - began < 1  # well before the 2 s connect timeout
        assert (value(during, "pg_up"), value(during, "pg_observer_polls_total")) == (0, 0)
        after = wait_for(url, lambda s: value(s, "pg_observer_poll_errors_total") == 1)
        assert 2 <= time.monotonic() - began < 5
        assert value(after, "pg_up") == 0
        assert 2 <= value(after, "pg_observer_poll_duration_seconds") < 4


def test_run_serves_until_sigterm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``observer sidecar`` in this process serves until SIGTERM, then returns 0 and restores
    the previous signal handlers."""
    port = free_port()
    before = signal.getsignal(signal.SIGTERM)

    def stop_when_serving() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                scrape(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                time.sleep(0.05)
                continue
            break
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_when_serving)
    stopper.start()
    try:
        code = main(["sidecar", "--port", str(port), "--multiproc-dir", str(tmp_path)])
    finally:
        stopper.join()
    assert code == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_broken_metrics_file_fails_the_scrape_not_the_sidecar(
    tmp_path: Path, sidecars: list[Sidecar]
) -> None:
    """A corrupt file in the workers' directory gives a 500 naming the error class; the sidecar
    keeps serving and recovers when the file is gone."""
    url = start(sidecars, multiproc_dir=str(tmp_path))
    # prometheus-client's mmap layout: used bytes, padding, then (key length, JSON key, value);
    # here the key is not JSON.
    key = b"not json"
    entry = struct.pack("i", len(key)) + key + b"\0" * 4 + struct.pack("d", 1.0)
    broken = tmp_path / "counter_4242.db"
    broken.write_bytes(struct.pack("i", 8 + len(entry)) + b"\0" * 4 + entry + b"\0" * 32)
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(url, timeout=5)
    assert failed.value.code == 500
    assert failed.value.read() == b"scrape failed: JSONDecodeError\n"
    failed.value.close()
    broken.unlink()
    assert value(scrape(url), "observer_sidecar_multiproc_files") == 0


@pytest.mark.postgres
def test_a_stalled_poller_makes_healthz_503(pg_url: str, sidecars: list[Sidecar]) -> None:
    """When the poller has not finished a poll for several intervals, /healthz says 503."""
    url = start(sidecars, database_url=pg_url)
    wait_for(url, lambda s: value(s, "pg_up") == 1, what="pg_up 1")
    poller = sidecars[0].poller
    assert poller is not None
    poller.stop()  # the thread ends: as dead as a stuck poller
    with pytest.raises(urllib.error.HTTPError) as unhealthy:
        urllib.request.urlopen(url.replace("/metrics", "/healthz"), timeout=5)
    assert (unhealthy.value.code, unhealthy.value.read()) == (503, b"poller stalled\n")
    unhealthy.value.close()
    port = str(sidecars[0].port)
    assert main(["sidecar", "--check-health", "--port", port]) == 1


def test_check_health_command_and_context_manager(tmp_path: Path) -> None:
    """``observer sidecar --check-health`` exits 0 against a serving sidecar (used as a context
    manager) and 1 once it is closed."""
    with Sidecar(SidecarConfig(port=0, multiproc_dir=str(tmp_path))) as sidecar:
        port = str(sidecar.port)
        assert main(["sidecar", "--check-health", "--port", port]) == 0
    assert main(["sidecar", "--check-health", "--port", port]) == 1
    assert check_health(SidecarConfig(address="::1", port=int(port))) == 1


def test_close_before_start_releases_the_port(tmp_path: Path) -> None:
    """A sidecar closed without being started returns at once and frees its port."""
    sidecar = Sidecar(SidecarConfig(port=0, multiproc_dir=str(tmp_path)))
    port = sidecar.port
    began = time.monotonic()
    sidecar.close()
    assert time.monotonic() - began < 1
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))
