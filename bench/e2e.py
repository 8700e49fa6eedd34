"""End to end over HTTP, every arm at the same time: one uvicorn per arm (one worker each, all
pinned to the same core), each under its own ``wrk`` (pinned to the other core, with
PostgreSQL's backends), all running during the same seconds.

Run one after another, arms could not be told apart on a shared 2-core VM: a bare-vs-bare
(A/A) ratio landed anywhere between 0.94 and 1.03. Run together, whatever else the machine does
hits every arm alike, and the kernel's scheduler shares the core fairly between the servers,
so each arm's throughput is set by its CPU cost per request: the ratios are what is compared.
Each server also reports its own CPU time and garbage collections (``GET /_bench/stats``), read
before and after each measured run: CPU µs per request and collections per 10k requests, the
evidence of bench/README.md ("The HTTP gap"). ``bare (A/A)`` is a second, identical bare
server: its distance from ``bare`` is the noise floor of the run.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.app import STATS_PATH
from bench.common import PgServer, median, pin_backends, spread

ROOT = Path(__file__).resolve().parent.parent
# arm -> (BENCH_ARM, instrument() options): a feature's cost is one more observer arm with its
# option on, e.g. "observer + <feature>": ("observer", {"<option>": True}), or with a part left
# out, e.g. "observer without <part>": ("observer-<part>", {}) (ABLATIONS in bench/app.py)
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "bare": ("bare", {}),
    "bare (A/A)": ("bare", {}),
    "passthrough (the floor)": ("passthrough", {}),
    "pass-through, contextvar = ASGI scope (the cause)": ("scopevar", {}),
    "observer": ("observer", {}),
    "otel": ("otel", {}),
}
ENDPOINTS = ("/noop", "/db")
POOL = "4,0"  # pool_size, max_overflow per server: 4 connections each, 24 for six arms

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if match is None:
        raise ValueError(f"cannot read wrk latency {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    server_cpu: float | None  # busy fraction of the servers' core during the run
    cpu_us: float | None = None  # the server process's CPU time per request
    gc_per_10k: list[float] | None = None  # collections per 10k requests, by generation
    gc_ms_per_10k: float | None = None  # time in the garbage collector per 10k requests


def parse_wrk(output: str) -> tuple[float, float, float, int, int]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    return rps, p50, p99, requests, errors


def _cpu_times(core: int) -> tuple[int, int] | None:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                values = [int(x) for x in line.split()[1:]]
                idle = values[3] + values[4]
                return idle, sum(values)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Server:
    """One uvicorn process for one arm."""

    def __init__(self, arm: str, dsn: str, core: int | None, wait: bool = True) -> None:
        self.arm = arm
        self.port = _free_port()
        env = dict(os.environ)
        kind, options = ARMS[arm]
        kind, *ablate = kind.split("-")  # observer-part: that part left out (bench/app.py)
        env.update(
            BENCH_ARM=kind,
            BENCH_ABLATE=",".join(ablate),
            BENCH_OBSERVER_OPTIONS=json.dumps(options),
            BENCH_DSN=dsn,
            BENCH_POOL=POOL,
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        cmd = [
            sys.executable, "-m", "uvicorn", "bench.app:app",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--loop", "asyncio", "--http", "h11", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        if core is not None:
            cmd = ["taskset", "-c", str(core), *cmd]
        self.process = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        if wait:
            self.wait_ready()

    def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.arm} server exited with {self.process.returncode}")
            try:
                if _get(self.port, "/noop", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the {self.arm} server did not start in {seconds:g} s")
            time.sleep(0.1)

    def stats(self, settle: bool = False) -> dict[str, Any]:
        status, body = _get(self.port, STATS_PATH + ("?settle=true" if settle else ""))
        if status != 200:
            raise RuntimeError(f"the {self.arm} server answered {status} on {STATS_PATH}")
        found: dict[str, Any] = json.loads(body)
        return found

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_wrk(url: str, *, seconds: float, connections: int, core: int | None) -> Any:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url]
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_wrk(process: Any, seconds: float) -> tuple[float, float, float, int, int]:
    out, err = process.communicate(timeout=seconds + 60)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {err[-500:]}")
    return parse_wrk(out)


def together(
    servers: list[Server],
    path: str,
    *,
    seconds: float,
    connections: int,
    core: int | None,
    server_core: int | None,
) -> dict[str, WrkRun]:
    """Load every server at once, each with its own wrk, for the same ``seconds``. Each server
    runs a full collection first (``settle``): a fresh process's first full collection walks
    the whole import-time heap (hundreds of ms on a loaded core), which would land in one arm's
    measured seconds and not another's by chance."""
    before = {srv.arm: srv.stats(settle=True) for srv in servers}
    busy = _cpu_times(server_core) if server_core is not None else None
    loads = [
        (srv, start_wrk(srv.url(path), seconds=seconds, connections=connections, core=core))
        for srv in servers
    ]
    found = {srv.arm: finish_wrk(process, seconds) for srv, process in loads}
    busy_after = _cpu_times(server_core) if server_core is not None else None
    cpu = None
    if busy and busy_after and busy_after[1] > busy[1]:
        cpu = 1 - (busy_after[0] - busy[0]) / (busy_after[1] - busy[1])
    runs = {}
    for srv in servers:
        rps, p50, p99, requests, errors = found[srv.arm]
        a, b = before[srv.arm], srv.stats()
        n = max(requests, 1)
        runs[srv.arm] = WrkRun(
            rps,
            p50,
            p99,
            requests,
            errors,
            cpu,
            cpu_us=(b["cpu_seconds"] - a["cpu_seconds"]) / n * 1e6,
            gc_per_10k=[
                (y - x) / n * 1e4 for x, y in zip(a["collections"], b["collections"], strict=True)
            ],
            gc_ms_per_10k=(b["gc_seconds"] - a["gc_seconds"]) / n * 1e7,
        )
    return runs


@dataclass
class E2EResult:
    rounds: int
    seconds: float
    warmup: float
    connections: int
    pinned: bool
    runs: dict[str, dict[str, list[WrkRun]]] = field(default_factory=dict)  # endpoint->arm->runs
    db_checkouts: list[dict[str, float]] = field(default_factory=list)  # observer sanity

    def summary(self, endpoint: str) -> list[dict[str, Any]]:
        arms = self.runs[endpoint]
        bare = arms["bare"]
        rows = []
        for arm, runs in arms.items():
            rps = [r.rps for r in runs]
            p99 = [r.p99_ms for r in runs]
            rows.append(
                {
                    "arm": arm,
                    "rps": median(rps),
                    "rps_spread": spread(rps),
                    "p50_ms": median(r.p50_ms for r in runs),
                    "p99_ms": median(p99),
                    "rps_ratio_paired": median(
                        r.rps / b.rps if b.rps else 0.0 for r, b in zip(runs, bare, strict=True)
                    ),
                    "rps_ratios": [
                        r.rps / b.rps if b.rps else 0.0 for r, b in zip(runs, bare, strict=True)
                    ],
                    "us_per_request": 1e6 / median(rps) - 1e6 / median(r.rps for r in bare)
                    if median(rps) and median(r.rps for r in bare)
                    else None,
                    "errors": sum(r.errors for r in runs),
                    "cpu_us": _median_of(r.cpu_us for r in runs),
                    "cpu_ratio_paired": _median_of(
                        r.cpu_us / b.cpu_us if r.cpu_us and b.cpu_us else None
                        for r, b in zip(runs, bare, strict=True)
                    ),
                    "gc_per_10k": [
                        _median_of(r.gc_per_10k[g] if r.gc_per_10k else None for r in runs)
                        for g in range(3)
                    ],
                    "gc_ms_per_10k": _median_of(r.gc_ms_per_10k for r in runs),
                    "server_cpu": median(r.server_cpu for r in runs if r.server_cpu is not None)
                    if any(r.server_cpu is not None for r in runs)
                    else None,
                }
            )
        return rows


def run(
    server: PgServer,
    database: str,
    *,
    rounds: int,
    seconds: float,
    warmup: float,
    connections: int,
    plan: tuple[int, int] | None,
) -> E2EResult:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    server_core, load_core = plan if plan else (None, None)
    dsn = server.url(database)
    result = E2EResult(rounds, seconds, warmup, connections, plan is not None)
    for r in range(rounds):
        servers = [Server(arm, dsn, server_core, wait=False) for arm in ARMS]
        try:
            for srv in servers:
                srv.wait_ready()
            endpoints = ENDPOINTS if r % 2 == 0 else ENDPOINTS[::-1]
            for endpoint in endpoints:
                load = {"connections": connections, "core": load_core, "server_core": server_core}
                if warmup > 0:
                    together(servers, endpoint, seconds=warmup, **load)
                if load_core is not None and endpoint == "/db":
                    pin_backends(server, database, load_core)
                runs = together(servers, endpoint, seconds=seconds, **load)
                for arm, run_ in runs.items():
                    result.runs.setdefault(endpoint, {}).setdefault(arm, []).append(run_)
            for srv in servers:
                if ARMS[srv.arm][0] == "observer":
                    status, body = _get(srv.port, "/metrics")
                    result.db_checkouts.append(
                        {
                            "arm": srv.arm,
                            "status": status,
                            "route_db_checkouts": _sample(
                                body, 'sqlalchemy_route_checkouts_total{route="/db"}'
                            ),
                            "wrk_db_requests": result.runs["/db"][srv.arm][-1].requests,
                        }
                    )
        finally:
            for srv in servers:
                srv.stop()
    return result


def _median_of(values: Any) -> float | None:
    found = [v for v in values if v is not None]
    return median(found) if found else None


def _sample(body: bytes, series: str) -> float:
    for line in body.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")
