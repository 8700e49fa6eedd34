"""The metrics port under attack: idle and dripping clients, a flood of connections, and another
process trying to bind the same port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from observer.metrics._server import MAX_HANDLERS, MetricsServer

ROOT = Path(__file__).resolve().parents[2]
HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\n"  # no blank line: the request never ends


def scrape_status(port: int) -> int:
    """The status of one complete ``GET /metrics``, read from the raw response line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        return int(sock.recv(64).split(b" ")[1])


def wait_until(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return bool(callable(condition) and condition())


def new_threads(before: set[threading.Thread]) -> set[threading.Thread]:
    return set(threading.enumerate()) - before


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    srv = MetricsServer(
        CollectorRegistry(), host="127.0.0.1", port=0, token=None, request_timeout=2.0
    )
    yield srv
    srv.close()


def test_idle_half_sent_requests_never_pile_up_threads(server: MetricsServer) -> None:
    """500 connections that each send half a request and idle: never more than MAX_HANDLERS
    (16) new threads, the connections beyond them get a 503 (or a reset) at once, at most 16
    per request timeout (2 s here) are served and dropped at their deadline, and after the
    timeout every handler thread is gone and scrapes are served again."""
    before = set(threading.enumerate())
    peak = 0
    clients = []
    started = time.monotonic()
    try:
        for _ in range(500):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(HALF_REQUEST)
            clients.append(sock)
            peak = max(peak, len(new_threads(before)))
        flood_seconds = time.monotonic() - started
        time.sleep(0.3)
        peak = max(peak, len(new_threads(before)))
        assert peak == MAX_HANDLERS == 16
        assert wait_until(lambda: not new_threads(before), timeout=5)
        answers = []
        for sock in clients:
            sock.settimeout(2)
            try:
                answers.append(sock.recv(64).split(b"\r\n")[0])
            except OSError:  # reset: the 503 went out, the unread half request reset it
                answers.append(b"reset")
    finally:
        for sock in clients:
            sock.close()
    busy = answers.count(b"HTTP/1.0 503 Service Unavailable") + answers.count(b"reset")
    dropped = answers.count(b"")  # served, then closed at the deadline without an answer
    assert dropped + busy == 500
    # 16 slots, each freed at the 2 s deadline: a slower flood (a loaded machine) meets more
    assert 16 <= dropped <= 16 * (1 + int(flood_seconds / 2.0))
    assert scrape_status(server.port) == 200
    assert wait_until(lambda: not new_threads(before), timeout=5)


def test_a_client_dripping_its_request_is_dropped_at_the_deadline(server: MetricsServer) -> None:
    """A client that sends one byte every 0.2 s (each read within the socket timeout) is still
    dropped once the request timeout (2 s) has passed since it connected."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        closed_after = None
        for byte in HALF_REQUEST * 4:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(64) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
    assert closed_after is not None
    assert 2.0 <= closed_after < 3.5


# -- another process on the same port ------------------------------------------------------

BIND = """
import sys
from prometheus_client import CollectorRegistry
from observer import ConfigurationError, Observer
try:
    obs = Observer(registry=CollectorRegistry(), metrics_port=int(sys.argv[1]))
except ConfigurationError as exc:
    print("error:", exc, flush=True)
    sys.exit(0)
print("port", obs.metrics_server.port, flush=True)
sys.stdin.read()
obs.close()
"""


def bind(port: int, tmp_path: Path, *, shared: bool) -> tuple[subprocess.Popen[str], str]:
    """A process with PROMETHEUS_MULTIPROC_DIR set (a multi-process server's worker) that
    creates an Observer on ``port``, opted in to sharing or not; its first output line."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "OBSERVER_METRICS_PORT_SHARED": "1" if shared else "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", BIND, str(port)],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def stop(proc: subprocess.Popen[str]) -> None:
    """Close its stdin (it ends), wait for it and close its pipes."""
    proc.communicate(timeout=30)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("first_shared", "second_shared"), [(False, False), (True, False), (False, True)]
)
def test_a_second_process_cannot_bind_the_port_unless_both_opted_in(
    tmp_path: Path, first_shared: bool, second_shared: bool
) -> None:
    """Two worker processes (PROMETHEUS_MULTIPROC_DIR set) on one metrics_port: unless both set
    metrics_port_shared, the second one's Observer fails with a ConfigurationError that names
    the option, instead of silently sharing the port (and its scrapes and tokens)."""
    first, line = bind(0, tmp_path, shared=first_shared)
    try:
        assert line.startswith("port ")
        port = int(line.split()[1])
        second, error = bind(port, tmp_path, shared=second_shared)
        stop(second)  # it ended after the error
        assert error == (
            f"error: metrics_port {port} on 127.0.0.1 cannot be used (Address already in use); "
            "choose a free port, 0 for any, or None to serve the metrics only on metrics_path "
            "(the workers of one server share a port only if each sets metrics_port_shared=True)"
        )
        assert scrape_status(port) == 200  # the first one still owns it
    finally:
        stop(first)


def test_workers_that_both_opted_in_share_the_port(tmp_path: Path) -> None:
    """With metrics_port_shared in both workers, the second binds the same port (SO_REUSEPORT)
    and scrapes are served while either is up."""
    first, line = bind(0, tmp_path, shared=True)
    try:
        port = int(line.split()[1])
        second, line2 = bind(port, tmp_path, shared=True)
        try:
            assert line2 == f"port {port}"
            assert scrape_status(port) == 200
        finally:
            stop(second)
        assert scrape_status(port) == 200
    finally:
        stop(first)
