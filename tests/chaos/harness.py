"""Chaos harness: a real uvicorn server in a subprocess, bounded load from httpx, and the checks
every scenario makes (same responses with and without the observer, no exception from observer
code in the server's log, exact gauges and consistent counters once traffic stops)."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.processes import free_port
from tests.helpers.scrape import Samples, scrape, value

__all__ = ["value"]

ROOT = Path(__file__).resolve().parents[2]
SCALE = max(1, int(os.environ.get("OBSERVER_CHAOS_SCALE", "1")))
"""Multiplies request counts and rounds (1: the bounded mode CI runs)."""

Outcomes = collections.Counter[str]


@dataclass
class Server:
    """One uvicorn server process (and its workers) serving tests/chaos/app.py."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    observer: bool
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def state(self) -> dict[str, Any]:
        response = httpx.get(self.url + "/admin/state", timeout=5)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def metrics(self) -> Samples:
        """Scrape the app's /metrics, or ``OBSERVER_METRICS_PORT`` when the app sets one, with
        ``OBSERVER_METRICS_TOKEN`` when it asks for one."""
        port = self.env.get("OBSERVER_METRICS_PORT")
        url = f"http://127.0.0.1:{port}/metrics" if port else self.url + "/metrics"
        token = self.env.get("OBSERVER_METRICS_TOKEN")
        if token is None:
            return scrape(url)
        response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        response.raise_for_status()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }


def start_server(
    database_url: str,
    log_path: Path,
    *,
    observer: bool,
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> Server:
    """Start uvicorn on a free port and wait until the app answers."""
    port = free_port()
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OBSERVER_", "CHAOS_")) and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    environ.update(
        {
            "PYTHONPATH": str(ROOT),
            "CHAOS_DATABASE_URL": database_url,
            "CHAOS_OBSERVER": "1" if observer else "0",
            **(env or {}),
        }
    )
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "tests.chaos.app:create",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if workers > 1:
        command += ["--workers", str(workers)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(proc, port, log_path, observer, environ)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{server.log()}")
        try:
            server.state()
            return server
        except (httpx.HTTPError, OSError):
            if time.monotonic() > deadline:
                stop_server(server)
                raise RuntimeError(f"the server did not answer in 30 s:\n{server.log()}") from None
            time.sleep(0.05)


def stop_server(server: Server) -> None:
    """SIGTERM (uvicorn's graceful shutdown), SIGKILL after 10 s."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# -- load ---------------------------------------------------------------------------------


def _outcome(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "200"
    try:
        detail = response.json().get("error", "")
    except ValueError:
        detail = response.text[:80]
    return f"{response.status_code} {detail}"


async def fetch(client: httpx.AsyncClient, path: str, *, read_timeout: float | None = None) -> str:
    """GET ``path``: ``"200"``, ``"500 <error class>"`` or the client exception's class."""
    try:
        response = await client.get(path, timeout=read_timeout if read_timeout is not None else 30)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return _outcome(response)


async def _load(
    base_url: str, paths: Iterable[str], concurrency: int, read_timeout: float | None
) -> Outcomes:
    outcomes: Outcomes = collections.Counter()
    queue = list(paths)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits) as client:

        async def worker() -> None:
            while queue:
                path = queue.pop()
                outcomes[await fetch(client, path, read_timeout=read_timeout)] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def load(
    server: Server, paths: Iterable[str], *, concurrency: int, timeout: float | None = None
) -> Outcomes:
    """Send every request in ``paths`` with ``concurrency`` clients; count the outcomes."""
    return asyncio.run(_load(server.url, paths, concurrency, timeout))


def wait_checked_out(server: Server, n: int, timeout: float = 10) -> None:
    """Wait until the app holds at least ``n`` connections (requests are in flight)."""
    deadline = time.monotonic() + timeout
    while server.state()["checked_out"] < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"the app never held {n} connections: {server.state()}")
        time.sleep(0.02)


def wait_connections_closed(server: Server, timeout: float = 10) -> None:
    """Wait until the app's driver has read the end of every connection it opened, after the
    server killed them all: a statement started before that point fails with an error that is
    not a disconnect (asyncpg's InternalClientError; tests/helpers/terminate.py)."""
    deadline = time.monotonic() + timeout
    while server.state()["open_connections"]:
        if time.monotonic() > deadline:
            raise AssertionError(f"the app still sees connections open: {server.state()}")
        time.sleep(0.02)


# -- checks -------------------------------------------------------------------------------

_FRAME = re.compile(r'^\s+File "([^"]+)", line \d+, in (\S+)')


def traceback_origins(log: str) -> list[str]:
    """The innermost frame (``path:function``) of every traceback in ``log``."""
    origins: list[str] = []
    last: str | None = None
    inside = False
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            inside, last = True, None
            continue
        if not inside:
            continue
        match = _FRAME.match(line)
        if match:
            last = f"{match.group(1)}:{match.group(2)}"
        elif line and not line[0].isspace():
            if last is not None:
                origins.append(last)
            inside = False
    return origins


def observer_origins(log: str) -> list[str]:
    """Tracebacks whose exception was raised in observer code (the demo app excepted)."""
    package = os.sep + "observer" + os.sep
    return [
        origin
        for origin in traceback_origins(log)
        if package in origin and os.sep + "demo" + os.sep not in origin
    ]


# The last line of a traceback: a class name (its last dotted part capitalised, not an all-caps
# log level such as "INFO:"), then ":" and the message, or nothing.
_EXCEPTION_LINE = re.compile(r"((?:[A-Za-z_]\w*\.)*[A-Z]\w*[a-z]\w*)(?::|$)")


def exception_lines(log: str) -> Outcomes:
    """Exception classes in the log's tracebacks (the line after each traceback's frames).
    Another thread's log line can land between a traceback's lines (the server prints a
    traceback in many writes): such a line is passed over, not taken for the exception."""
    found: Outcomes = collections.Counter()
    inside = False
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            inside = True
        elif inside and line and not line[0].isspace():
            match = _EXCEPTION_LINE.match(line)
            if match is not None:
                found[match.group(1)] += 1
                inside = False
    return found


def pool_label(database_url: str) -> str:
    """The observer's default pool label for the app's URL (what watch() names it)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    return f"postgresql://{url.host}:{url.port}/{url.database}"


def invariants(samples: Samples, pool: str) -> dict[str, float]:
    """The figures the invariants are about, read from one scrape of a single worker."""

    def v(name: str, **labels: str) -> float:
        return value(samples, name, **labels) or 0.0

    closed = sum(
        val
        for (name, labels), val in samples.items()
        if name == "sqlalchemy_pool_connections_closed_total" and ("pool", pool) in labels
    )
    route_checkouts = sum(
        val for (name, _), val in samples.items() if name == "sqlalchemy_route_checkouts_total"
    )
    leaks = sum(
        val for (name, _), val in samples.items() if name == "sqlalchemy_orm_session_leaks_total"
    )
    hook_errors = sum(
        val for (name, _), val in samples.items() if name == "observer_hook_errors_total"
    )
    return {
        "checked_out": v("sqlalchemy_pool_checked_out_connections", pool=pool),
        "checked_in": v("sqlalchemy_pool_checked_in_connections", pool=pool),
        "waiting": v("sqlalchemy_pool_waiting_requests", pool=pool),
        "sessions_open": v("sqlalchemy_orm_sessions_open"),
        "checkouts": v("sqlalchemy_pool_checkouts_total", pool=pool),
        "timeouts": v("sqlalchemy_pool_checkout_timeouts_total", pool=pool),
        "checkout_duration_count": v("sqlalchemy_pool_checkout_duration_seconds_count", pool=pool),
        "hold_count": v("sqlalchemy_pool_connection_hold_seconds_count", pool=pool),
        "opened": v("sqlalchemy_pool_connections_opened_total", pool=pool),
        "closed": closed,
        "route_checkouts": route_checkouts,
        "sessions_opened": v("sqlalchemy_orm_sessions_opened_total"),
        "sessions_closed": v("sqlalchemy_orm_sessions_closed_total"),
        "session_duration_count": v("sqlalchemy_orm_session_duration_seconds_count"),
        "leaks": leaks,
        "hook_errors": hook_errors,
    }


def violations(f: dict[str, float], *, broken_checkin: bool = False) -> list[str]:
    """The invariants that do not hold once traffic has stopped (an empty list: all hold).

    From the pool and session trackers: every checkout is observed once in the hold histogram
    when it comes back (checkin, detach, or reclaim by the GC); every acquire attempt that got a
    connection or timed out is observed once in the checkout-duration histogram; connections
    opened minus closed (every reason) are the ones the pool holds; per-route checkouts add up
    to the pool's; sessions opened minus closed are the open ones, each closed one observed once.
    """
    problems = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"{what}: {f}")

    need(f["checked_out"] == 0, "checked_out == 0")
    need(f["waiting"] == 0, "waiting == 0")
    need(f["sessions_open"] == 0, "sessions_open == 0")
    need(f["checkouts"] > 0, "checkouts > 0")
    if broken_checkin:
        need(f["hold_count"] == 0, "hold_count == 0 (the checkin hook always raised)")
        need(f["hook_errors"] == f["checkouts"], "hook_errors == checkouts")
    else:
        need(f["checkouts"] == f["hold_count"], "checkouts == hold_count")
        need(f["hook_errors"] == 0, "hook_errors == 0")
    need(
        f["checkout_duration_count"] == f["checkouts"] + f["timeouts"],
        "checkout_duration_count == checkouts + timeouts",
    )
    need(f["route_checkouts"] == f["checkouts"], "route_checkouts == checkouts")
    need(f["sessions_opened"] - f["sessions_closed"] == 0, "sessions opened - closed == 0")
    need(f["session_duration_count"] == f["sessions_closed"], "session_duration_count == closed")
    need(f["leaks"] == 0, "no leak reported")
    return problems


def settle(
    server: Server, pool: str, *, broken_checkin: bool = False, timeout: float = 10
) -> dict[str, float]:
    """Scrape until every invariant holds (work deferred out of hooks lands within a sweep);
    fails with the last figures and the broken invariants after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        figures = invariants(server.metrics(), pool)
        problems = violations(figures, broken_checkin=broken_checkin)
        if not problems:
            return figures
        if time.monotonic() > deadline:
            raise AssertionError(
                "invariants do not hold once traffic stopped:\n" + "\n".join(problems)
            )
        time.sleep(0.1)


def record(scenario: str, **figures: Any) -> None:
    """Append the scenario's figures to ``$OBSERVER_CHAOS_REPORT`` (JSON lines), if set."""
    path = os.environ.get("OBSERVER_CHAOS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"scenario": scenario, **figures}, default=dict) + "\n")
