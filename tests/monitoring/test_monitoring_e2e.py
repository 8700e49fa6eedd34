"""End to end: a real Prometheus scrapes a real instrumented app on PostgreSQL, with our rules."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from observer.monitoring._origin_table import leaking_lines_query
from observer.monitoring._render import write
from observer.monitoring.config import MonitoringConfig
from observer.server._label import server_label
from tests.helpers import require
from tests.helpers.processes import free_port, process_group
from tests.monitoring.promql import MACROS, dashboard_expressions, substitute, variable_queries
from tests.monitoring.shipped import ALERTS, DASHBOARDS, ROOT, RULES

pytestmark = [pytest.mark.promtool, pytest.mark.postgres, pytest.mark.slow]

DEADLINE_SECONDS = 60
JOB = "pool-observer-e2e"
# The sidecar scraped as a job of its own (in deploy/ it is the app's target: one job).
SIDECAR_JOB = "pool-observer-e2e-sidecar"
# The Grafana interval for a 1 s scrape: 4 scrapes, as Grafana computes $__rate_interval.
RATE_INTERVAL = "4s"


def _wait(
    what: str,
    ready: Callable[[], bool],
    deadline: float,
    logs: list[Path],
    procs: list[subprocess.Popen[bytes]],
) -> None:
    """Poll ``ready`` until it holds; fail with the logs at the deadline or when one of
    ``procs`` has exited."""
    while time.monotonic() < deadline:
        exited = [proc.args for proc in procs if proc.poll() is not None]
        if exited:
            problem = f"exited while waiting for {what}: {exited}"
            break
        with contextlib.suppress(httpx.HTTPError):
            if ready():
                return
        time.sleep(0.2)
    else:
        problem = f"timed out waiting for {what}"
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)
    pytest.fail(f"{problem}\n{tails}")


def _load(app: str, stop: threading.Event) -> None:
    """Keep the 2-connection pool exhausted: holders hold for 2 s, the others time out."""
    with httpx.Client(base_url=app, timeout=10) as client:
        while not stop.is_set():
            # Timed-out checkouts end in 500s, after which the server may drop the connection.
            with contextlib.suppress(httpx.TransportError):
                client.get("/hold/2")


def _line_of(code: str, function: str) -> int:
    """The line of ``code`` in ``function`` of the e2e app (the origin of its sessions)."""
    lines = (ROOT / "tests" / "monitoring" / "e2e_app.py").read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if f"def {function}(" in line)
    return next(n for n in range(start, len(lines)) if code in lines[n]) + 1


def _query(prom: httpx.Client, expr: str) -> list[dict[str, Any]]:
    """The instant vector of ``expr``."""
    result = prom.get("/api/v1/query", params={"query": expr}).json()
    assert result["status"] == "success", (expr, result)
    vector: list[dict[str, Any]] = result["data"]["result"]
    return vector


def test_alerts_fire_rules_evaluate_and_every_panel_has_data(
    pg_url: str, pg_database: str, tmp_path: Path
) -> None:
    """request_end leaks and an exhausted pool drive the matching alerts to pending/firing with
    the exact labels, the leak alert's description naming the app line that leaked; the healthy
    pool stays quiet; no rule fails to evaluate; the sidecar, scraped as a job of its own, sees
    PostgreSQL and the leaked transactions; every dashboard query, the server view's included,
    returns data with the variables set to this topology, and the leaking code lines table
    gives the line its route, its count and (with a source URL) its link."""
    prometheus_bin = shutil.which("prometheus")
    require(prometheus_bin is not None, "prometheus is not installed (apt-get install prometheus)")
    assert prometheus_bin is not None
    deadline = time.monotonic() + DEADLINE_SECONDS
    app_port, sidecar_port, prom_port = free_port(), free_port(), free_port()
    app_url, prom_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{prom_port}"
    sidecar_url = f"http://127.0.0.1:{sidecar_port}"
    instance, sidecar_instance = f"127.0.0.1:{app_port}", f"127.0.0.1:{sidecar_port}"
    # Only this app's connections: other tests may share the server.
    application_name = f"observer-e2e-{os.getpid()}-{app_port}"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES), str(ALERTS)],
                "scrape_configs": [
                    # The app's pools are named ("main"): the target names their server, as
                    # docs/production.md tells, for the fleet's budget to join the sidecar's.
                    {
                        "job_name": JOB,
                        "static_configs": [
                            {"targets": [instance], "labels": {"server": server_label(pg_url)}}
                        ],
                    },
                    {"job_name": SIDECAR_JOB, "static_configs": [{"targets": [sidecar_instance]}]},
                ],
            }
        )
    )
    app_log, sidecar_log = tmp_path / "app.log", tmp_path / "sidecar.log"
    prom_log = tmp_path / "prometheus.log"
    logs = [app_log, sidecar_log, prom_log]
    app_args = [
        sys.executable,
        "-m",
        "tests.monitoring.e2e_app",
        str(app_port),
        pg_url,
        application_name,
    ]
    sidecar_args = [
        *(sys.executable, "-m", "observer.cli", "sidecar"),
        *("--address", "127.0.0.1", "--port", str(sidecar_port)),
        *("--database-url", pg_url, "--application-name", application_name),
        *("--poll-interval", "0.5", "--statement-timeout-ms", "400", "--connect-timeout", "3"),
    ]
    prom_args = [
        prometheus_bin,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    stop = threading.Event()
    with (
        process_group(app_args, app_log, cwd=ROOT) as app_proc,
        process_group(sidecar_args, sidecar_log, cwd=ROOT) as sidecar_proc,
        process_group(prom_args, prom_log) as prom_proc,
        httpx.Client(base_url=app_url, timeout=10) as app,
        httpx.Client(base_url=prom_url, timeout=10) as prom,
    ):
        procs = [app_proc, sidecar_proc, prom_proc]

        def wait(what: str, ready: Callable[[], bool]) -> None:
            _wait(what, ready, deadline, logs, procs)

        wait("the app", lambda: app.get("/metrics").status_code == 200)
        wait("the sidecar", lambda: httpx.get(f"{sidecar_url}/healthz").is_success)
        wait("Prometheus", lambda: prom.get("/-/ready").status_code == 200)

        def targets_up() -> bool:
            targets = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
            return sorted((t["labels"]["job"], t["health"]) for t in targets) == [
                (JOB, "up"),
                (SIDECAR_JOB, "up"),
            ]

        wait("the scrape targets", targets_up)

        for n in range(3):
            assert app.get(f"/leak/{n}").status_code == 200
            assert app.get("/ok").status_code == 200
        loaders = [threading.Thread(target=_load, args=(app_url, stop)) for _ in range(6)]
        for loader in loaders:
            loader.start()

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
        described: dict[str, str] = {}  # alert -> its description, as Prometheus expanded it

        def alerts_active() -> bool:
            for alert in prom.get("/api/v1/alerts").json()["data"]["alerts"]:
                labels = dict(alert["labels"])
                name = labels.pop("alertname")
                assert alert["state"] in {"pending", "firing"}
                seen_pools.add((name, labels.get("pool", "")))
                if name in expected and labels == expected[name]:
                    seen[name] = labels
                    described[name] = alert["annotations"]["description"]
            return sorted(seen) == sorted(expected)

        try:
            wait("the alerts", alerts_active)
        finally:
            stop.set()
            for loader in loaders:
                loader.join(timeout=15)
        assert seen == expected
        # The leaking route's alert names the line of the app that leaked (its only route that
        # leaks, so the pairing by reason is exact).
        leak_line = f"tests/monitoring/e2e_app.py:{_line_of('await session.execute', 'leak')}"
        assert re.search(
            rf"\. Top leaking line: {re.escape(leak_line)} in leak \([123] leaks in 10m\)\.$",
            described["SQLAlchemySessionsLeaking"],
        ), described["SQLAlchemySessionsLeaking"]
        assert ("SQLAlchemyPoolExhausted", "leaky") not in seen_pools
        assert ("SQLAlchemyPoolSaturationHigh", "leaky") not in seen_pools

        # The three leaks are request_end ones, of the endpoint's route template.
        leaks = _query(prom, f'sqlalchemy_orm_session_leaks_total{{job="{JOB}"}} > 0')
        assert [(r["metric"]["reason"], r["metric"]["route"], r["value"][1]) for r in leaks] == [
            ("request_end", "/leak/{n}", "3")
        ]

        # The sidecar reaches PostgreSQL and sees the leaked sessions' open transactions: once
        # the holders' transactions are over, exactly the three leaked ones stay.
        up = _query(prom, "pg_up")
        assert [(r["metric"]["job"], r["metric"]["instance"], r["value"][1]) for r in up] == [
            (SIDECAR_JOB, sidecar_instance, "1")
        ]
        idle = (
            f'pg_stat_activity_count{{job="{SIDECAR_JOB}", datname="{pg_database}", '
            f'application_name="{application_name}", state="idle in transaction"}}'
        )
        wait(
            "the three leaked transactions alone",
            lambda: [r["value"][1] for r in _query(prom, idle)] == ["3"],
        )

        groups = prom.get("/api/v1/rules").json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == 33  # 23 alerts, 10 recording rules
        assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules] == [
            (r["name"], "ok", "") for r in rules
        ]

        # The variables as a user sets them for this topology: the app's job and instance,
        # the sidecar's as server_job and server_instance. Each variable offers its value...
        values = {
            "job": JOB,
            "instance": instance,
            "pool": "main",
            "server_job": SIDECAR_JOB,
            "server_instance": sidecar_instance,
        }
        offered = []
        for path in DASHBOARDS:
            board = json.loads(path.read_text())
            for name, label, selector in variable_queries(board, {**MACROS, **values}):
                found = {r["metric"].get(label) for r in _query(prom, selector)}
                assert values[name] in found, (path.name, name, found)
                offered.append(name)
        assert sorted(offered) == sorted([*values, "job", "instance", "job", "instance"])
        # ...the app's job has no server view: filtering it on $job would show nothing...
        assert _query(prom, f'pg_up{{job="{JOB}"}}') == []
        # ...and with those values every panel query returns data, the server view's included.
        empty = []
        checked = 0
        for where, expr in dashboard_expressions(RATE_INTERVAL, values):
            checked += 1
            if not _query(prom, expr):
                empty.append(where)
        assert empty == []
        assert checked == 78  # 69 panel targets and 9 variable queries
        # The leaking code lines table: the leaking line, with its route (the only one leaking
        # with request_end) and its three leaks; rendered with --source-url, its link.
        source = MonitoringConfig(source_url="https://git.example.com/app/blob/main/{path}#L{line}")
        table = substitute(leaking_lines_query(source), {**MACROS, **values})
        rows = [(r["metric"], r["value"][1]) for r in _query(prom, table)]
        line = _line_of("await session.execute", "leak")
        assert rows == [
            (
                {
                    "instance": instance,
                    "origin": f"tests/monitoring/e2e_app.py:{line} in leak",
                    "reason": "request_end",
                    "route": "/leak/{n}",
                    "url": f"https://git.example.com/app/blob/main/tests/monitoring/e2e_app.py#L{line}",
                },
                "3",
            )
        ]


# The shipped rules with short windows, so the incident plays in seconds (promtool tests in
# alerts/tests/held.yaml play it with the shipped 2-minute and 10-minute ones).
FAST = MonitoringConfig(
    scrape_interval="1s",
    held_too_long_seconds=2,
    held_too_long_for="2s",
    leaked_open_for="2s",
    pool_stuck_window="5s",
    pool_stuck_for="2s",
    leaks_window="5s",
    leaks_for="1s",
)


def test_a_pool_stuck_by_leaks_keeps_the_held_now_alerts_firing(
    pg_url: str, tmp_path: Path
) -> None:
    """The field test's incident on PostgreSQL, with the rules rendered with short windows:
    three /login requests each leak a session holding a connection of the 3-connection pool
    ``stuck``, the next one times out (and leaks its session too). The held-now gauges show it
    (3 connections held by /login, the oldest for seconds), and
    SQLAlchemyConnectionHeldTooLong and SQLAlchemyLeakedSessionsOpen (naming /login) and
    SQLAlchemyPoolStuck (naming the pool) fire and stay firing after SQLAlchemySessionsLeaking,
    a rate of new leaks, has cleared. Both leak alerts name /login's leaking line."""
    prometheus_bin = shutil.which("prometheus")
    require(prometheus_bin is not None, "prometheus is not installed (apt-get install prometheus)")
    assert prometheus_bin is not None
    deadline = time.monotonic() + DEADLINE_SECONDS
    app_port, prom_port = free_port(), free_port()
    app_url, prom_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{prom_port}"
    instance = f"127.0.0.1:{app_port}"
    rules = write(tmp_path / "rules", FAST)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(path) for path in rules if path.suffix == ".yaml"],
                "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [instance]}]}],
            }
        )
    )
    app_log, prom_log = tmp_path / "app.log", tmp_path / "prometheus.log"
    app_args = [sys.executable, "-m", "tests.monitoring.e2e_app", str(app_port), pg_url]
    prom_args = [
        prometheus_bin,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    with (
        process_group(app_args, app_log, cwd=ROOT) as app_proc,
        process_group(prom_args, prom_log) as prom_proc,
        httpx.Client(base_url=app_url, timeout=10) as app,
        httpx.Client(base_url=prom_url, timeout=10) as prom,
    ):

        def wait(what: str, ready: Callable[[], bool]) -> None:
            _wait(what, ready, deadline, [app_log, prom_log], [app_proc, prom_proc])

        wait("the app", lambda: app.get("/metrics").status_code == 200)
        wait("Prometheus", lambda: prom.get("/-/ready").status_code == 200)
        wait("the scrape", lambda: bool(_query(prom, f'sqlalchemy_pools{{job="{JOB}"}}')))
        for _ in range(3):  # the burst: every connection of the pool leaked
            assert app.get("/login").status_code == 200
        assert app.get("/login").status_code == 500  # QueuePool limit reached: stuck

        held_now = {
            "SQLAlchemyConnectionHeldTooLong": {"route": "/login", "severity": "warning"},
            "SQLAlchemyLeakedSessionsOpen": {"route": "/login", "severity": "warning"},
            "SQLAlchemyPoolStuck": {"pool": "stuck", "severity": "critical"},
        }

        described: dict[str, str] = {}  # alert -> its description, as Prometheus expanded it

        def firing() -> dict[str, dict[str, str]]:
            found = {}
            for alert in prom.get("/api/v1/alerts").json()["data"]["alerts"]:
                labels = dict(alert["labels"])
                name = labels.pop("alertname")
                if alert["state"] == "firing":
                    assert (labels.pop("job"), labels.pop("instance")) == (JOB, instance)
                    found[name] = labels
                    described[name] = alert["annotations"]["description"]
            return found

        leaking: list[dict[str, str]] = []  # SQLAlchemySessionsLeaking while it fired

        def incident_as_lived() -> bool:
            now = firing()
            if "SQLAlchemySessionsLeaking" in now:
                leaking.append(now["SQLAlchemySessionsLeaking"])
                return False
            return bool(leaking) and all(
                now.get(name) == labels for name, labels in held_now.items()
            )

        wait("the held-now alerts firing after the leak rate cleared", incident_as_lived)
        assert leaking[0] == {"route": "/login", "severity": "warning"}
        # Both leak alerts name the planted bug's line, the one alone after the leaks stopped.
        login = f"tests/monitoring/e2e_app.py:{_line_of('await session.execute', 'login')} in login"
        assert re.search(
            rf"\. Top leaking line: {re.escape(login)} \([34] leaks\)\.$",
            described["SQLAlchemyLeakedSessionsOpen"],
        ), described["SQLAlchemyLeakedSessionsOpen"]
        assert re.search(
            rf"\. Top leaking line: {re.escape(login)} \([1-4] leaks in 5s\)\.$",
            described["SQLAlchemySessionsLeaking"],
        ), described["SQLAlchemySessionsLeaking"]
        held = _query(prom, f'sqlalchemy_route_connections_held{{job="{JOB}", route="/login"}}')
        assert [r["value"][1] for r in held] == ["3"]
        oldest = _query(prom, f'sqlalchemy_pool_oldest_checkout_seconds{{job="{JOB}"}}')
        ages = {r["metric"]["pool"]: float(r["value"][1]) for r in oldest}
        assert ages["stuck"] > FAST.held_too_long_seconds
        assert (ages["main"], ages["leaky"]) == (0.0, 0.0)
        # Four leaks: the timed-out request's session is left in its transaction too, unclosed
        # (it holds no connection: the gauges show the three that do).
        # The timed-out request's session is dropped with its request: found at the request's
        # end or by the garbage collector, whichever comes first (counted once either way).
        leaks = _query(prom, f'sqlalchemy_orm_session_leaks_total{{job="{JOB}"}} > 0')
        by_reason = {r["metric"]["reason"]: int(r["value"][1]) for r in leaks}
        assert {r["metric"]["route"] for r in leaks} == {"/login"}
        assert sum(by_reason.values()) == 4
        assert by_reason["request_end"] >= 3
        assert set(by_reason) <= {"request_end", "garbage_collected"}
