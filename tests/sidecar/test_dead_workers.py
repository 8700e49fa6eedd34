"""A worker killed without mark_process_dead (uvicorn --workers has no child_exit hook) leaves
no gauge behind in what the other workers' /metrics serve; its counters stay in the totals."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from observer.metrics._exposition import render
from observer.sidecar import Sidecar
from observer.sidecar._config import add_arguments, resolve
from tests.chaos.harness import pool_label, start_server, stop_server
from tests.helpers.scrape import Samples, value, wait_for
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


def test_the_sidecar_drops_a_sigkilled_uvicorn_workers_gauges_by_default(
    pg_url: str, tmp_path: Path
) -> None:
    """Under ``uvicorn --workers 2``, a worker SIGKILLed while a request holds a session and a
    connection: with no pruning flag given, the sidecar's /metrics drops its checked-out and
    /sleep route series and open sessions fall back to 0 (all would stay 1 for ever)."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    server = start_server(
        pg_url, tmp_path / "app.log", observer=True, workers=2,
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
    )  # fmt: skip
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--multiproc-dir", str(directory), "--port", "0"])
    sidecar = Sidecar(resolve(args, {})).start()
    url = f"http://127.0.0.1:{sidecar.port}/metrics"
    pool = pool_label(pg_url)
    held = threading.Thread(target=fetch_quietly, args=(f"{server.url}/sleep?seconds=60",))
    try:
        held.start()
        # Each gauge reaches the directory at its worker's next push: wait for all three.
        samples = wait_for(
            url, lambda s: sorted(checked_out(s, pool).values()) == [0.0, 1.0]
            and value(s, "sqlalchemy_orm_sessions_open") == 1
            and value(s, "sqlalchemy_route_connections_held", route="/sleep") == 1,
            what="one worker holding a session and a connection", timeout=20,
        )  # fmt: skip
        (pid,) = (worker for worker, held in checked_out(samples, pool).items() if held == 1)
        assert value(samples, "sqlalchemy_orm_sessions_open") == 1
        assert value(samples, "sqlalchemy_route_connections_held", route="/sleep") == 1
        os.kill(int(pid), signal.SIGKILL)
        after = wait_for(
            url, lambda s: pid not in checked_out(s, pool), what=f"pid {pid} to leave /metrics"
        )
        assert checked_out(after, pool).get(pid) is None
        assert value(after, "sqlalchemy_orm_sessions_open") == 0
        # only the dead worker's file had a /sleep series: the route leaves with it
        assert value(after, "sqlalchemy_route_connections_held", route="/sleep") is None
        assert value(after, "observer_sidecar_dead_workers_pruned_total") == 1
    finally:
        sidecar.close()
        stop_server(server)
        held.join(timeout=30)


def checked_out(samples: Samples, pool: str) -> dict[str, float]:
    """pid -> checked-out connections of each worker's pool ``pool`` that /metrics shows."""
    return {
        dict(labels)["pid"]: number
        for (name, labels), number in samples.items()
        if name == "sqlalchemy_pool_checked_out_connections" and ("pool", pool) in labels
    }


def fetch_quietly(url: str) -> None:
    """A request whose worker is killed under it: the broken connection is the expected end."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(url, timeout=90)


def test_the_sidecar_prunes_nothing_while_it_sees_no_worker_alive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In another pid namespace every worker pid looks dead: until one has been seen alive,
    the sidecar prunes nothing (the gauges stay) and says why once; once it has seen a live
    worker, a dead one's gauges go."""
    from observer.metrics._multiprocess import MultiprocessDirectory

    invisible = 2**22 + 12345  # above Linux's default pid_max: never a live process here
    (tmp_path / f"gauge_liveall_{invisible}.db").write_bytes(b"")  # names are what prune reads
    own = tmp_path / f"gauge_liveall_{os.getpid()}.db"
    directory = MultiprocessDirectory(str(tmp_path), prune_dead_workers=True, outside_the_app=True)
    with caplog.at_level("WARNING", logger="observer.sidecar"):
        assert (directory.prune(), directory.prune()) == ([], [])
    assert [r.getMessage()[:58] for r in caplog.records] == [
        "not pruning: none of the 1 worker pids in the multiprocess"
    ]
    assert (tmp_path / f"gauge_liveall_{invisible}.db").exists()
    own.write_bytes(b"")  # a worker this process can see: the namespace is shared after all
    assert directory.prune() == [invisible]
    assert not (tmp_path / f"gauge_liveall_{invisible}.db").exists()
    assert directory.pruned == 1
