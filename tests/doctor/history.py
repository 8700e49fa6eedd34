"""A fleet's history with a known answer, as OpenMetrics text for ``promtool tsdb
create-blocks-from openmetrics``, and a real Prometheus serving it."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import subprocess
import time
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from observer.metrics._spec import HOLD_BUCKETS, WAIT_BUCKETS
from tests.helpers.processes import free_port, process_group

JOB = "api"
OTHER_JOB = "worker"
STEP = 30  # seconds between samples, as a 30 s scrape interval
SPAN = 3 * 3600 + 600  # seconds of history: 3 h 10 min
PEAK = (3600, 7200)  # the busy hour, in seconds before the end of the history
A, B, SIDECAR = "app-a:8000", "app-b:8000", "sidecar:9100"
WORKERS_A = 2  # instance A runs 2 workers (multiprocess mode: gauges by pid, counters summed)


@dataclass(frozen=True)
class Truth:
    """What the history was made of: per process of instance A at the peak (the busiest)."""

    served_per_process: float = 20.0  # checkouts per second
    timeouts_per_process: float = 0.2  # timed-out checkouts per second
    hold_seconds: float = 0.5  # every hold lasts exactly this long
    off_peak_share: float = 0.4  # traffic outside the peak hour, as a share of the peak's
    b_share: float = 0.7  # instance B (one process) runs at this share of one A process
    max_checked_out: float = 14.0  # the highest gauge sample (A, pid 101, in the peak)
    max_waiting: float = 2.0  # at that same sample
    pool_size: int = 5  # what the pools are configured with today
    max_overflow: int = 5
    server_max_connections: int = 100  # the sidecar's pg_settings_* series
    server_reserved: int = 3

    @property
    def arrival_rate(self) -> float:
        """Checkouts asked for per second per process at the peak (timeouts included)."""
        return self.served_per_process + self.timeouts_per_process

    @property
    def concurrency(self) -> float:
        """Little's law: connections in use on average per process at the peak."""
        return self.arrival_rate * self.hold_seconds


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _rate(truth: Truth, ago: float, instance: str, per_process: float) -> float:
    """Per-second rate of a counter of ``instance`` at ``ago`` seconds before the end."""
    share = 1.0 if PEAK[0] <= ago < PEAK[1] else truth.off_peak_share
    processes = WORKERS_A if instance == A else truth.b_share
    return per_process * share * processes


def openmetrics(truth: Truth, end: float) -> str:
    """The history as OpenMetrics text, samples every STEP seconds up to ``end``."""
    times = [end - SPAN + i * STEP for i in range(SPAN // STEP + 1)]
    out: list[str] = []

    def counter(family: str, series: dict[str, float], per_sample_rates: str = "") -> None:
        out.append(f"# TYPE {family} counter")
        for labels, per_process in series.items():
            total = 0.0
            instance = A if A in labels else B
            for t in times:
                out.append(f"{family}_total{labels} {total:.6f} {t:.0f}")
                total += _rate(truth, end - t, instance, per_process) * STEP

    def histogram(family: str, buckets: tuple[float, ...], value: float, rate: float) -> None:
        out.append(f"# TYPE {family} histogram")
        for instance in (A, B):
            count = 0.0
            for t in times:
                base = f'job="{JOB}",instance="{instance}",pool="main"'
                for le in (*buckets, math.inf):
                    inside = count if value <= le else 0.0
                    bound = "+Inf" if le == math.inf else repr(le)
                    out.append(f'{family}_bucket{{{base},le="{bound}"}} {inside:.6f} {t:.0f}')
                out.append(f"{family}_sum{{{base}}} {count * value:.6f} {t:.0f}")
                out.append(f"{family}_count{{{base}}} {count:.6f} {t:.0f}")
                count += _rate(truth, end - t, instance, rate) * STEP

    def gauge(family: str, value_at: dict[str, object]) -> None:
        out.append(f"# TYPE {family} gauge")
        for labels, value in value_at.items():
            for t in times:
                v = value(end - t) if callable(value) else value
                out.append(f"{family}{labels} {v} {t:.0f}")

    main_a, main_b = (
        _labels(job=JOB, instance=A, pool="main"),
        _labels(job=JOB, instance=B, pool="main"),
    )
    reports_b = _labels(job=JOB, instance=B, pool="reports")
    # Another job on the same Prometheus (a queue worker): doctor must be told which.
    other = _labels(job=OTHER_JOB, instance="worker:8000", pool="main")
    counter(
        "sqlalchemy_pool_checkouts",
        {main_a: truth.served_per_process, main_b: truth.served_per_process, reports_b: 0.0}
        | {other: 1.0},
    )
    counter(
        "sqlalchemy_pool_checkout_timeouts",
        {main_a: truth.timeouts_per_process, main_b: 0.0, reports_b: 0.0},
    )
    histogram(
        "sqlalchemy_pool_connection_hold_seconds",
        HOLD_BUCKETS,
        truth.hold_seconds,
        truth.served_per_process,
    )
    histogram(
        "sqlalchemy_pool_checkout_duration_seconds", WAIT_BUCKETS, 0.0008, truth.served_per_process
    )
    spike = (PEAK[0] + PEAK[1]) // 2 // STEP * STEP  # one sample in the peak hour

    def in_use(ago: float) -> float:
        return truth.max_checked_out if ago == spike else 6.0

    def waiting(ago: float) -> float:
        return truth.max_waiting if ago == spike else 0.0

    pids = [_labels(job=JOB, instance=A, pool="main", pid=pid) for pid in ("101", "102")]
    gauge(
        "sqlalchemy_pool_checked_out_connections",
        {pids[0]: in_use, pids[1]: 5.0, main_b: 4.0, reports_b: 0.0},
    )
    gauge(
        "sqlalchemy_pool_waiting_requests",
        {pids[0]: waiting, pids[1]: 0.0, main_b: 0.0, reports_b: 0.0},
    )
    gauge("sqlalchemy_pool_size", {p: truth.pool_size for p in (*pids, main_b)} | {reports_b: 2})
    total = truth.pool_size + truth.max_overflow
    gauge("sqlalchemy_pool_max_connections", {p: total for p in (*pids, main_b)} | {reports_b: 4})
    routes = {
        _labels(job=JOB, instance=i, route=r): rate
        for i in (A, B)
        for r, rate in (
            ("/orders/{id}", truth.served_per_process * 0.75),
            ("/health", 5.0),
            ("none", 0.0),
        )
    }
    counter("sqlalchemy_route_requests", routes)
    counter(
        "sqlalchemy_route_connection_hold_seconds",
        {
            labels: rate * truth.hold_seconds * (1.0 if "orders" in labels else 0.1)
            for labels, rate in routes.items()
        },
    )
    server = _labels(job=JOB, instance=SIDECAR)
    gauge("pg_settings_max_connections", {server: truth.server_max_connections})
    gauge("pg_settings_superuser_reserved_connections", {server: truth.server_reserved})
    out.append("# EOF")
    return "\n".join(out) + "\n"  # fmt: skip


def _bcrypt(password: str) -> str:
    """The bcrypt hash Prometheus' web config wants (libxcrypt's, through the crypt module)."""
    with warnings.catch_warnings():  # crypt is deprecated (Python 3.13 drops it)
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


@contextlib.contextmanager
def serve_history(
    text: str,
    work: Path,
    promtool: str,
    prometheus: str,
    login: tuple[str, str] | None = None,
    deadline_seconds: float = 60,
) -> Iterator[str]:
    """Backfill ``text`` into a TSDB under ``work``, run Prometheus on it (loopback, a free
    port, no scrape; with ``login``, a user and password, basic auth required), yield its URL;
    the server is stopped on exit."""
    source, data = work / "history.om", work / "data"
    source.write_text(text)
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        check=True, capture_output=True, timeout=deadline_seconds,
    )  # fmt: skip
    config = work / "prometheus.yml"
    config.write_text(json.dumps({"global": {"scrape_interval": "1h"}}))
    web = work / "web.yml"
    users = {login[0]: _bcrypt(login[1])} if login else {}
    web.write_text(json.dumps({"basic_auth_users": users} if users else {}))
    port = free_port()
    log = work / "prometheus.log"
    args = [
        prometheus, f"--config.file={config}", f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={web}",
        "--storage.tsdb.retention.time=30d",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with process_group(args, log) as proc:
        _wait_ready(url, proc, log, time.monotonic() + deadline_seconds, login)
        yield url


def _wait_ready(
    url: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    deadline: float,
    login: tuple[str, str] | None,
) -> None:
    request = urllib.request.Request(f"{url}/-/ready")
    if login is not None:
        pair = base64.b64encode(":".join(login).encode()).decode()
        request.add_header("Authorization", f"Basic {pair}")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=2) as answer:
            if answer.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"prometheus was not ready in time: {log.read_text()[-3000:]}")
