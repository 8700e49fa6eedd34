"""A worker killed without mark_process_dead (uvicorn --workers has no child_exit hook) leaves
no gauge behind in what the other workers' /metrics serve; its counters stay in the totals."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from observer.metrics._exposition import render
from tests.metrics.test_multiprocess import start_worker

pytestmark = pytest.mark.postgres


def test_a_killed_worker_gauges_leave_the_scrape(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL a worker holding a connection: the next scrape drops its gauges (checked-out 1
    would otherwise stay for ever) and keeps its checkouts in the counter."""
    worker = start_worker(pg_url, tmp_path, checkouts=2)
    try:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        alive, _ = render(CollectorRegistry())
        series = f'sqlalchemy_pool_checked_out_connections{{pid="{worker.pid}",pool="app"}} 1.0'
        assert series.encode() in alive
        worker.kill()
        worker.wait(timeout=10)
        body, _ = render(CollectorRegistry())
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
        for pipe in (worker.stdin, worker.stdout):
            if pipe is not None:
                pipe.close()
    assert f'pid="{worker.pid}"'.encode() not in body
    assert b'sqlalchemy_pool_checkouts_total{pool="app"} 3.0' in body
    assert not list(tmp_path.glob(f"gauge_live*_{worker.pid}.db"))
