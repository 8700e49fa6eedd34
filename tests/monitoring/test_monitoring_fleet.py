"""A simulated fleet on a real Prometheus: replicas of two multiprocess workers, each replica
served by its own sidecar, against a real PostgreSQL whose max_connections is small. The shipped
rules (short ``for:``) sum the fleet's budget per server; a fourth replica pushes it over the
server's limit and the budget alert fires, then clears when the replica goes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from observer.monitoring._render import write
from observer.monitoring.config import MonitoringConfig
from observer.server._label import server_label
from tests.helpers import require
from tests.helpers.pgcluster import PgCluster, available
from tests.helpers.processes import free_port
from tests.monitoring.shipped import ROOT

pytestmark = [pytest.mark.promtool, pytest.mark.postgres, pytest.mark.slow]

DEADLINE_SECONDS = 90
JOB = "fleet"
APP = "fleet-test"  # the workers' application_name, which the sidecars watch
WORKERS, POOL_SIZE, MAX_OVERFLOW = 2, 3, 2  # a budget of 5 connections per worker
# 40 - 3 reserved = 37 slots: three replicas (30, 81%) fit under 90%, four (40, 108%) do not.
MAX_CONNECTIONS, RESERVED = 40, 3
AVAILABLE = MAX_CONNECTIONS - RESERVED
PER_REPLICA = WORKERS * (POOL_SIZE + MAX_OVERFLOW)
ALERT = "SQLAlchemyFleetBudgetOverServerLimit"
FAST = MonitoringConfig(scrape_interval="1s", fleet_budget_for="3s", fleet_connections_for="3s")


class Replica:
    """One replica: a PROMETHEUS_MULTIPROC_DIR, its worker processes and its sidecar."""

    def __init__(self, root: Path, n: int, url: str) -> None:
        self.n, self.url = n, url
        self.dir = root / f"replica-{n}"
        self.dir.mkdir()
        self.port = free_port()
        self.log = root / f"replica-{n}.log"
        self.workers: list[subprocess.Popen[str]] = []
        self.sidecar: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    def start(self) -> None:
        """Start the workers (each prints ready once its pool is up), then the sidecar."""
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.dir)}
        env["OBSERVER_APPLICATION_NAME"] = APP
        self._out = self.log.open("ab")
        args = [sys.executable, "-m", "tests.monitoring.fleet_worker", self.url]
        for _ in range(WORKERS):
            worker = subprocess.Popen(
                [*args, str(POOL_SIZE), str(MAX_OVERFLOW)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._out,
                text=True,
                cwd=ROOT,
                env=env,
            )
            self.workers.append(worker)
        for worker in self.workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready", self.log.read_text()
        sidecar = [sys.executable, "-m", "observer.cli", "sidecar", "--port", str(self.port)]
        sidecar += ["--multiproc-dir", str(self.dir), "--database-url", self.url]
        sidecar += ["--application-name", APP, "--poll-interval", "0.5"]
        sidecar += ["--statement-timeout-ms", "400", "--connect-timeout", "3"]
        self.sidecar = subprocess.Popen(
            sidecar, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )

    def stop(self) -> None:
        """The replica goes: its sidecar stops (the target is down), its workers exit."""
        if self.sidecar is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.sidecar.pid, signal.SIGTERM)
            try:
                self.sidecar.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.sidecar.pid, signal.SIGKILL)
                self.sidecar.wait(timeout=5)
            self.sidecar = None
        for worker in self.workers:
            with contextlib.suppress(OSError, ValueError):
                assert worker.stdin is not None
                worker.stdin.close()
        for worker in self.workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=5)
            if worker.stdout is not None:
                worker.stdout.close()
        self.workers = []
        if self._out is not None:
            self._out.close()
            self._out = None


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    """A throwaway server with a small connection limit."""
    require(available(), "PostgreSQL server binaries (initdb, pg_ctl) are not available")
    settings = {
        "max_connections": str(MAX_CONNECTIONS),
        "superuser_reserved_connections": str(RESERVED),
    }
    with PgCluster(settings=settings) as pg:
        yield pg


@contextlib.contextmanager
def _prometheus(
    config: Path, data: Path, port: int, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    binary = shutil.which("prometheus")
    require(binary is not None, "prometheus is not installed (apt-get install prometheus)")
    assert binary is not None
    args = [binary, f"--config.file={config}", f"--storage.tsdb.path={data}"]
    args.append(f"--web.listen-address=127.0.0.1:{port}")
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _value(prom: httpx.Client, expr: str) -> list[tuple[dict[str, str], float]]:
    """The instant vector of ``expr`` as (labels without the name, value) pairs."""
    result = prom.get("/api/v1/query", params={"query": expr}).json()
    assert result["status"] == "success", (expr, result)
    return [
        ({k: v for k, v in r["metric"].items() if k != "__name__"}, float(r["value"][1]))
        for r in result["data"]["result"]
    ]


def _alerts(prom: httpx.Client, name: str) -> list[dict[str, Any]]:
    return [
        alert
        for alert in prom.get("/api/v1/alerts").json()["data"]["alerts"]
        if alert["labels"]["alertname"] == name
    ]


def _budget(prom: httpx.Client) -> list[tuple[dict[str, str], float]]:
    return _value(prom, f'job_server:sqlalchemy_pool_max_connections:sum{{job="{JOB}"}}')


def _firing(prom: httpx.Client) -> list[tuple[str, dict[str, str]]]:
    return [(alert["state"], alert["labels"]) for alert in _alerts(prom, ALERT)]


def _prometheus_config(tmp_path: Path, replicas: list[Replica]) -> Path:
    """Scrape every replica's sidecar as one job (the last is down until it starts), with the
    shipped rules rendered with a short for:."""
    rules = [str(p) for p in write(tmp_path / "rules", FAST) if p.suffix == ".yaml"]
    targets = [f"127.0.0.1:{r.port}" for r in replicas]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": rules,
                "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
            }
        )
    )
    return config


def _check_three_replicas(prom: httpx.Client, server: str) -> None:
    """Each worker's pool once: six per-pid series behind the sum; the server's slots; the
    open connections as PostgreSQL itself counts them (each sidecar sees all six)."""
    per_pid = _value(prom, f'sqlalchemy_pool_max_connections{{job="{JOB}"}}')
    assert sorted(v for _, v in per_pid) == [POOL_SIZE + MAX_OVERFLOW] * 6
    assert all("pid" in labels for labels, _ in per_pid)
    share = "server:sqlalchemy_pool_max_connections_per_available_connections:ratio"
    [(labels, ratio)] = _value(prom, share)
    assert (labels, ratio) == ({"server": server}, pytest.approx(30 / AVAILABLE))
    assert _value(prom, "server:pg_settings_available_connections:min") == [
        ({"server": server}, AVAILABLE)
    ]
    seen = f'max(sum by (instance) (pg_stat_activity_count{{application_name="{APP}"}}))'
    assert _value(prom, seen) == [({}, 6)]


def test_a_replica_over_the_server_limit_fires_the_budget_alert_and_clears_when_it_goes(
    cluster: PgCluster, tmp_path: Path
) -> None:
    """Three replicas x two workers (pool_size 3 + max_overflow 2) against a server with 37
    slots: the recorded budget is exactly 30 (each worker's pool counted once, from the per-pid
    series of three sidecars), the open connections 6 (as PostgreSQL itself counts them), and
    the alert stays quiet. A fourth replica takes the budget to 40 (108%) and the alert fires
    for that server; once it goes, the budget is 30 again and the alert clears. A worker killed
    with SIGKILL leaves the budget (25)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    url = cluster.url()
    server = server_label(url)
    assert server == f"127.0.0.1:{cluster.port}"
    replicas = [Replica(tmp_path, n, url) for n in range(1, 5)]
    config = _prometheus_config(tmp_path, replicas)
    prom_port = free_port()
    prom_log = tmp_path / "prometheus.log"
    logs = [prom_log] + [r.log for r in replicas]

    def wait(what: str, prom: httpx.Client, ready: Callable[[], bool]) -> None:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if ready():
                    return
            time.sleep(0.25)
        tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
        with contextlib.suppress(httpx.HTTPError):
            tails += f"\n--- budget: {_budget(prom)}, alerts: {_firing(prom)}"
        pytest.fail(f"timed out waiting for {what}\n{tails}")

    per_server = {"job": JOB, "server": server}
    opened = "server:sqlalchemy_pool_open_connections:sum"
    firing = [("firing", {"alertname": ALERT, "server": server, "severity": "warning"})]
    try:
        for replica in replicas[:3]:
            replica.start()
        with (
            _prometheus(config, tmp_path / "data", prom_port, prom_log),
            httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=10) as prom,
        ):
            wait("Prometheus", prom, lambda: prom.get("/-/ready").status_code == 200)
            wait("three replicas", prom, lambda: _budget(prom) == [(per_server, 30)])
            wait(
                "open connections", prom, lambda: _value(prom, opened) == [({"server": server}, 6)]
            )
            _check_three_replicas(prom, server)
            time.sleep(2 * 3)  # longer than for: (3s) at 81%: nothing pending or firing
            assert _alerts(prom, ALERT) == []

            replicas[3].start()
            wait("the alert firing", prom, lambda: _firing(prom) == firing)
            assert _budget(prom) == [(per_server, 4 * PER_REPLICA)]

            replicas[3].stop()
            wait("the alert cleared", prom, lambda: _alerts(prom, ALERT) == [])
            assert _budget(prom) == [(per_server, 3 * PER_REPLICA)]

            # A worker killed without a word (the OOM killer): its replica's sidecar prunes its
            # live gauges, so a dead worker's pool leaves the budget.
            killed = replicas[0].workers[0]
            killed.kill()
            killed.wait(timeout=10)  # reaped, as its server (gunicorn, uvicorn) would
            wait("the dead worker gone", prom, lambda: _budget(prom) == [(per_server, 25)])
    finally:
        for replica in replicas:
            replica.stop()
