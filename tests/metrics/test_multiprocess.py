"""Multi-process servers: with PROMETHEUS_MULTIPROC_DIR every worker's numbers add up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from observer.metrics._exposition import render

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]


def start_worker(pg_url: str, directory: Path, checkouts: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.mp_worker", pg_url, str(checkouts)],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def collect(directory: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def test_two_workers_add_up_and_a_dead_worker_drops_out(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counters of two real workers sum; pool gauges keep one series per live worker; open
    connections and live pools sum; a worker marked dead leaves the gauges, not the counters."""
    a = start_worker(pg_url, tmp_path, checkouts=3)
    b = start_worker(pg_url, tmp_path, checkouts=5)
    try:
        registry = collect(tmp_path)
        # each worker: N checkouts plus the one it still holds
        assert registry.get_sample_value("sqlalchemy_pool_checkouts_total", {"pool": "app"}) == 10.0
        out = "sqlalchemy_pool_checked_out_connections"
        assert registry.get_sample_value(out, {"pool": "app", "pid": str(a.pid)}) == 1.0
        assert registry.get_sample_value(out, {"pool": "app", "pid": str(b.pid)}) == 1.0
        size = "sqlalchemy_pool_size"
        assert registry.get_sample_value(size, {"pool": "app", "pid": str(a.pid)}) == 3.0
        assert registry.get_sample_value("sqlalchemy_pools", {}) == 2.0
        # what a worker's own GET /metrics serves in this mode: the same aggregate
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        body, _ = render(CollectorRegistry())
        assert b'sqlalchemy_pool_checkouts_total{pool="app"} 10.0' in body
        stop(b)
        mark_process_dead(b.pid, str(tmp_path))  # what gunicorn's child_exit hook does
        registry = collect(tmp_path)
        assert registry.get_sample_value(out, {"pool": "app", "pid": str(b.pid)}) is None
        assert registry.get_sample_value(out, {"pool": "app", "pid": str(a.pid)}) == 1.0
        assert registry.get_sample_value("sqlalchemy_pool_checkouts_total", {"pool": "app"}) == 10.0
        assert registry.get_sample_value("sqlalchemy_pools", {}) == 1.0
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
