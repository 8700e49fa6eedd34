"""End to end: a real Prometheus scrapes a real instrumented app on PostgreSQL, with our rules."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from observer.monitoring.names import SIDECAR_METRICS
from tests.conftest import require
from tests.monitoring.promql import dashboard_expressions, metric_names
from tests.monitoring.shipped import ALERTS, ROOT, RULES

pytestmark = [pytest.mark.promtool, pytest.mark.postgres, pytest.mark.slow]

DEADLINE_SECONDS = 60
JOB = "pool-observer-e2e"
# The Grafana interval for a 1 s scrape: 4 scrapes, as Grafana computes $__rate_interval.
RATE_INTERVAL = "4s"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _process(args: list[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``args`` in its own process group; stop the group (TERM, then KILL) on exit."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
        )
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def _wait(what: str, ready: Callable[[], bool], deadline: float, logs: list[Path]) -> None:
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if ready():
                return
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)
    pytest.fail(f"timed out waiting for {what}\n{tails}")


def _load(app: str, stop: threading.Event) -> None:
    """Keep the 2-connection pool exhausted: holders hold for 2 s, the others time out."""
    with httpx.Client(base_url=app, timeout=10) as client:
        while not stop.is_set():
            # Timed-out checkouts end in 500s, after which the server may drop the connection.
            with contextlib.suppress(httpx.TransportError):
                client.get("/hold/2")


def test_alerts_fire_rules_evaluate_and_every_panel_has_data(pg_url: str, tmp_path: Path) -> None:
    """Leaks and an exhausted pool drive the matching alerts to pending/firing with the exact
    labels; the healthy pool stays quiet; no rule fails to evaluate; every dashboard query
    (sidecar panels aside) returns data."""
    prometheus_bin = shutil.which("prometheus")
    require(prometheus_bin is not None, "prometheus is not installed (apt-get install prometheus)")
    assert prometheus_bin is not None
    deadline = time.monotonic() + DEADLINE_SECONDS
    app_port, prom_port = _free_port(), _free_port()
    app_url, prom_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{prom_port}"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES), str(ALERTS)],
                "scrape_configs": [
                    {"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}]}
                ],
            }
        )
    )
    app_log, prom_log = tmp_path / "app.log", tmp_path / "prometheus.log"
    logs = [app_log, prom_log]
    app_args = [sys.executable, "-m", "tests.monitoring.e2e_app", str(app_port), pg_url]
    prom_args = [
        prometheus_bin,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    stop = threading.Event()
    with (
        _process(app_args, app_log, cwd=ROOT),
        _process(prom_args, prom_log),
        httpx.Client(base_url=app_url, timeout=10) as app,
        httpx.Client(base_url=prom_url, timeout=10) as prom,
    ):
        _wait("the app", lambda: app.get("/metrics").status_code == 200, deadline, logs)
        _wait("Prometheus", lambda: prom.get("/-/ready").status_code == 200, deadline, logs)

        def target_up() -> bool:
            targets = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
            return [t["health"] for t in targets] == ["up"]

        _wait("the scrape target", target_up, deadline, logs)

        for n in range(3):
            assert app.get(f"/leak/{n}").status_code == 200
            assert app.get("/ok").status_code == 200
        loaders = [threading.Thread(target=_load, args=(app_url, stop)) for _ in range(6)]
        for loader in loaders:
            loader.start()

        instance = f"127.0.0.1:{app_port}"
        pool_labels = {"job": JOB, "instance": instance, "pool": "main"}
        expected = {
            "SQLAlchemyPoolExhausted": {**pool_labels, "severity": "critical"},
            "SQLAlchemyPoolSaturationHigh": {**pool_labels, "severity": "warning"},
            "SQLAlchemyPoolCheckoutTimeouts": {**pool_labels, "severity": "critical"},
            "SQLAlchemyPoolSlowCheckout": {**pool_labels, "severity": "warning"},
            "SQLAlchemySessionsLeaking": {
                "job": JOB,
                "instance": instance,
                "route": "/leak/{n}",
                "severity": "warning",
            },
        }
        seen: dict[str, dict[str, str]] = {}
        seen_pools: set[tuple[str, str]] = set()

        def alerts_active() -> bool:
            for alert in prom.get("/api/v1/alerts").json()["data"]["alerts"]:
                labels = dict(alert["labels"])
                name = labels.pop("alertname")
                assert alert["state"] in {"pending", "firing"}
                seen_pools.add((name, labels.get("pool", "")))
                if name in expected and labels == expected[name]:
                    seen[name] = labels
            return sorted(seen) == sorted(expected)

        try:
            _wait("the alerts", alerts_active, deadline, logs)
        finally:
            stop.set()
            for loader in loaders:
                loader.join(timeout=15)
        assert seen == expected
        assert ("SQLAlchemyPoolExhausted", "leaky") not in seen_pools
        assert ("SQLAlchemyPoolSaturationHigh", "leaky") not in seen_pools

        groups = prom.get("/api/v1/rules").json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == 17  # 14 alerts, 3 recording rules
        assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules] == [
            (r["name"], "ok", "") for r in rules
        ]

        empty = []
        checked = 0
        for where, expr in dashboard_expressions(RATE_INTERVAL):
            if metric_names(expr) <= set(SIDECAR_METRICS):
                continue  # the server view needs the sidecar, not running here
            result = prom.get("/api/v1/query", params={"query": expr}).json()
            assert result["status"] == "success", (where, result)
            checked += 1
            if not result["data"]["result"]:
                empty.append(where)
        assert empty == []
        assert checked == 53  # 46 panel targets and 7 variable queries; 6 need the sidecar
