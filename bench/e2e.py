"""End to end over HTTP: uvicorn (one worker, pinned to one core) under ``wrk`` (pinned to the
other core, with PostgreSQL's backends), one fresh server process per arm and round.

Arms alternate within each round in a rotated order; ``bare (A/A)`` is a second, identical
bare server: its distance from ``bare`` is the noise floor of the run.
"""

from __future__ import annotations

import http.client
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

from bench.common import PgServer, median, pin_backends, rotated, spread

ROOT = Path(__file__).resolve().parent.parent
ARMS = {
    "bare": "bare",
    "observer": "observer",
    "otel": "otel",
    "bare (A/A)": "bare",
    "passthrough (the floor)": "passthrough",
}
ENDPOINTS = ("/noop", "/db")

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
    server_cpu: float | None  # busy fraction of the server's core during the run


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

    def __init__(self, arm: str, dsn: str, core: int | None) -> None:
        self.port = _free_port()
        env = dict(os.environ)
        env.update(
            BENCH_ARM=ARMS[arm],
            BENCH_DSN=dsn,
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
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {arm} server exited with {self.process.returncode}")
            try:
                if _get(self.port, "/noop", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the {arm} server did not start in 30 s")
            time.sleep(0.1)

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


def wrk(
    url: str, *, seconds: float, connections: int, core: int | None, server_core: int | None
) -> WrkRun:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url]
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd]
    before = _cpu_times(server_core) if server_core is not None else None
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60)
    after = _cpu_times(server_core) if server_core is not None else None
    cpu = None
    if before and after and after[1] > before[1]:
        cpu = 1 - (after[0] - before[0]) / (after[1] - before[1])
    rps, p50, p99, requests, errors = parse_wrk(out.stdout)
    return WrkRun(rps, p50, p99, requests, errors, cpu)


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
                    "rps_ratio": median(rps) / median(r.rps for r in bare),
                    "rps_ratio_paired": median(
                        r.rps / b.rps for r, b in zip(runs, bare, strict=True)
                    ),
                    "rps_ratios": [r.rps / b.rps for r, b in zip(runs, bare, strict=True)],
                    "p99_ratios": [r.p99_ms / b.p99_ms for r, b in zip(runs, bare, strict=True)],
                    "p99_ratio": median(p99) / median(r.p99_ms for r in bare),
                    "us_per_request": 1e6 / median(rps) - 1e6 / median(r.rps for r in bare),
                    "errors": sum(r.errors for r in runs),
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
        for arm in rotated(list(ARMS), r):
            srv = Server(arm, dsn, server_core)
            try:
                for endpoint in ENDPOINTS:
                    if warmup > 0:
                        wrk(
                            srv.url(endpoint),
                            seconds=warmup,
                            connections=connections,
                            core=load_core,
                            server_core=None,
                        )
                    if load_core is not None and endpoint == "/db":
                        pin_backends(server, database, load_core)
                    run_ = wrk(
                        srv.url(endpoint),
                        seconds=seconds,
                        connections=connections,
                        core=load_core,
                        server_core=server_core,
                    )
                    result.runs.setdefault(endpoint, {}).setdefault(arm, []).append(run_)
                if ARMS[arm] == "observer":
                    status, body = _get(srv.port, "/metrics")
                    result.db_checkouts.append(
                        {
                            "status": status,
                            "route_db_checkouts": _sample(
                                body, 'sqlalchemy_route_checkouts_total{route="/db"}'
                            ),
                            "wrk_db_requests": result.runs["/db"][arm][-1].requests,
                        }
                    )
            finally:
                srv.stop()
    return result


def _sample(body: bytes, series: str) -> float:
    for line in body.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")
