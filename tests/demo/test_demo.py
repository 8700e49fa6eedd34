"""The README's first command: ``observer demo`` runs to completion and names the leaks."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import httpx
import pytest

from observer.cli import main
from tests.helpers.processes import free_port


def run_demo(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["demo", "--short", "--no-progress", *args]) == 0
    return capsys.readouterr().out


def wait_for_line(stream: IO[str], prefix: str, timeout: float) -> bool:
    """Read ``stream`` until a line starts with ``prefix`` (False at EOF or after ``timeout``)."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")  # EOF

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            return False
        if not line:
            return False
        if line.startswith(prefix):
            return True
    return False


def check_summary(out: str) -> None:
    """The report's facts: answers, the leaks with their lines, the stray engines' route, each
    problem's fix from its log event's hint, and the next steps last."""
    assert re.search(r"^Served 150 requests in [\d.]+ s:$", out, re.M)
    assert re.search(r"^  200 x\d+ +/orders/\{n\} x\d+", out, re.M)
    # The leaking lines, from the origin counter, each with the routes that leaked from it.
    section = out.split(
        "Session leaks by the line of code that began each session "
        "(sqlalchemy_orm_session_leak_origins_total)\n",
        1,
    )[1].split("\n\n", 1)[0]
    rows = [
        re.fullmatch(r"  +(\d+) x (\w+) +(\S+ in \w+) <- (.+)", line)
        for line in section.splitlines()
    ]
    assert rows, out
    assert all(rows), section
    leaks = {(m[2], route): m[3] for m in rows if m for route in m[4].split(", ")}
    # The two leaking endpoints, each with the line that opened its session. Under PostgreSQL a
    # healthy request can be collateral damage of those leaks (its connection is left busy, its
    # close fails, its session is collected open: seen with and without the observer), so other
    # routes may appear too; every origin is still a line of the demo app.
    assert {"/cart/{cart_id}", "/checkout/{cart_id}"} <= {route for _, route in leaks}
    cart = leaks[("garbage_collected", "/cart/{cart_id}")]
    checkout = leaks[("garbage_collected", "/checkout/{cart_id}")]
    assert (
        cart == f"observer/demo/app.py:{line_of('rows = (await session', 'get_cart')} in get_cart"
    )
    assert checkout == f"observer/demo/app.py:{line_of('await session', 'checkout')} in checkout"
    assert all("observer/demo/app.py:" in origin for origin in leaks.values())
    assert re.search(r"/reports/daily\s+\d+\s+[\d.]+", out)  # the route holding connections
    assert re.search(r"^  \d+ more than the 1 watched: an engine is being created per request, "
                     r"on /stats$", out, re.M)  # fmt: skip
    fixes = out.split("How to fix it (the hints of those log events, by route)\n", 1)[1]
    blocks: dict[str, list[str]] = {}  # "  route, at origin" -> its "    - hint [events]" lines
    header = ""
    for line in fixes.split("\n\n", 1)[0].splitlines():
        if line.startswith("    - "):
            blocks[header].append(line)
        else:
            header = line
            blocks[header] = []
    dropped = (
        "    - the session was dropped without close(); use 'async with Session() as session' or "
        "close it in a finally block [session.leak garbage_collected x"
    )
    for route, origin in (("/cart/{cart_id}", cart), ("/checkout/{cart_id}", checkout)):
        assert any(hint.startswith(dropped) for hint in blocks[f"  {route}, at {origin}"])
    ship = line_of("await session.execute(update(orders)", "ship_order")
    ship_block = blocks[
        f"  /orders/{{order_id}}/ship, at observer/demo/app.py:{ship} in ship_order"
    ]
    assert len(ship_block) == 1  # held across the carrier call: the line after the await
    assert ship_block[0].startswith("    - the connection sat in its transaction with no statement")
    assert re.search(r"\[pool\.held_idle x\d+\]$", ship_block[0])
    ship_row = re.search(r"^  /orders/\{order_id\}/ship +\d+ +([\d.]+) +([\d.]+) ", out, re.M)
    assert ship_row is not None
    assert float(ship_row[2]) >= 0.25
    assert float(ship_row[2]) <= float(ship_row[1])
    stats = line_of("async with engine_here.connect() as conn:", "stats")
    engines = re.search(r"^  200 x\d+ .*/stats x(\d+)", out, re.M)  # one new pool per answer
    assert engines is not None
    assert blocks[f"  /stats, at observer/demo/app.py:{stats} in stats"] == [
        "    - a new connection pool appeared while the app is serving: create the engine once "
        "at startup and share it; an engine per request opens a new pool (and new connections) "
        f"every time [pool.created_after_startup x{engines[1]}]"
    ]
    base = re.search(
        r"^pool-observer demo: open the live page now: (http://\S+)/observer$", out, re.M
    )
    assert base is not None
    steps = out.split("\nWhat to do next\n", 1)[1].splitlines()
    assert steps[:6] == [
        "  Instrument your own app: three lines (README.md, Quickstart)",
        '      pip install ".[asyncpg,fastapi]"     # from a clone of pool-observer',
        "      import observer",
        '      observer.instrument(app, engine, live_page_path="/observer")',
        f"  The live page:  {base[1]}/observer",
        f"  The metrics:    {base[1]}/metrics (sqlalchemy_pool_*, sqlalchemy_orm_*, ...)",
    ]
    shipped = (ROOT / "alerts" / "pool-observer-alerts.yaml").read_text()
    alerts = len(re.findall(r"^\s*- alert: ", shipped, re.M))
    assert alerts >= 17  # the count printed is the shipped file's, whatever it is today
    assert steps[-1] == (
        "  Dashboards and alerts: 3 Grafana dashboards in dashboards/ (Connection pools, Routes: "
        f"culprits and victims, Sessions and leaks), {alerts} alert rules in alerts/"
    )


def check_clean(out: str) -> None:
    """No error logged with a traceback, and no connection handed to two requests: the demo's
    leaked sessions are collected from a plain task (observer/demo/_leaked.py)."""
    errors = out.split("\nErrors logged", 1)[1].split("\n\n", 1)[0]
    assert errors.startswith(" with a traceback: none."), errors[:800]
    assert "pool.double_handout" not in out, out


def line_of(code: str, function: str) -> int:
    """The line number of ``code`` inside ``function`` of the demo app (a session's origin is
    the line that began its transaction)."""
    lines = (ROOT / "observer" / "demo" / "app.py").read_text().splitlines()
    start = next(n for n, line in enumerate(lines) if f"def {function}(" in line)
    return next(n for n in range(start, len(lines)) if code in lines[n]) + 1


ROOT = Path(__file__).resolve().parents[2]


def test_demo_on_the_embedded_database(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no URL the demo runs on an embedded SQLite file and finds both leaking routes;
    nothing fails with a traceback there. The leaks do not make the pool hand one connection to
    two requests either: the demo's leaked sessions are collected from a plain task
    (observer/demo/_leaked.py, docs/reliability.md)."""
    monkeypatch.chdir(ROOT)  # the shipped dashboards are named relative to the directory
    out = run_demo(capsys)
    check_summary(out)
    check_clean(out)


@pytest.mark.postgres
def test_demo_on_postgresql(
    capsys: pytest.CaptureFixture[str], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --database-url the same demo runs on PostgreSQL and finds the same leaks; there
    too, no error with a traceback and no double handout."""
    monkeypatch.chdir(ROOT)
    out = run_demo(capsys, "--database-url", pg_url)
    check_summary(out)
    check_clean(out)


def test_the_readme_demo_command_tells_a_short_story() -> None:
    """``scripts/demo`` (the README's first command), progress bar on: fewer than 150 lines on
    stdout and stderr together, no traceback, nothing printed over the progress bar, the live
    page's URL first and the next steps last."""
    # bytes: text mode would read each "\r" of the progress bar as a line end
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo"), "--short"], capture_output=True, timeout=300
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, err[-2000:]
    check_summary(out)
    check_clean(out)
    assert out.count("\n") + err.count("\n") < 150
    assert "Traceback" not in out + err
    assert out.startswith("pool-observer demo: open the live page now: http://")
    assert out.splitlines()[-1].startswith("  Dashboards and alerts: ")
    bar = [line for line in err.split("\n") if "load [" in line]
    assert len(bar) == 1
    segments = bar[0].split("\r")[1:]
    assert len(segments) == 15  # every 10th of 150 requests, and nothing else on that line
    assert all(re.fullmatch(r"  load \[[#.]{30}\] +\d+/150 +\d+ req/s", s) for s in segments)


def test_demo_serve_answers_the_live_page_it_printed() -> None:
    """``--serve`` prints the live page's URL first; that URL answers 200 with the page, and
    the demo stops on Ctrl-C without a traceback."""
    port = free_port()
    command = [sys.executable, "-m", "observer.cli", "demo", "--serve", "--short",
               "--no-progress", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert (
            first
            == f"pool-observer demo: open the live page now: http://127.0.0.1:{port}/observer\n"
        )
        url = first.rsplit(" ", 1)[1].strip()
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200
        assert "<title>pool-observer: live</title>" in page.text
        snapshot = httpx.get(f"{url}/snapshot.json", timeout=10).json()
        assert [pool["size"] for pool in snapshot["pools"]] == [5]
        assert wait_for_line(proc.stdout, f"Serving the live page on {url}; Ctrl-C to stop.", 120)
        assert httpx.get(url, timeout=10).status_code == 200  # still up after the report
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        errors = proc.stderr.read() if proc.stderr is not None else ""
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == 130  # the shell's code for a program ended by Ctrl-C
    assert errors == ""


def test_demo_rejects_a_sync_url(capsys: pytest.CaptureFixture[str]) -> None:
    """A URL without an async driver fails at once with the fix."""
    assert main(["demo", "--database-url", "postgresql://db/app"]) == 2
    assert capsys.readouterr().err == (
        "observer demo: error: --database-url needs an async driver, e.g. "
        "postgresql+asyncpg://... (got a URL for 'postgresql')\n"
    )


@pytest.mark.postgres
def test_demo_serves_on_several_workers_and_their_metrics_add_up(
    pg_url: str, tmp_path: Path
) -> None:
    """``--serve --workers 2`` (the Docker stack's app) serves the instrumented app on two
    uvicorn workers; /metrics adds their counters up and keeps one pool series per worker."""
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "observer.cli", "demo", "--serve", "--workers", "2",
               "--port", str(port), "--requests", "60", "--database-url", pg_url]  # fmt: skip
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert proc.stdout is not None
        # the workers' own log lines (leaks found) share stdout with the demo's progress
        assert wait_for_line(proc.stdout, "observer demo: load round 1: 60 requests", 60)
        pids: set[str] = set()
        checkouts = 0.0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(pids) < 2:
            body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            pids = set(re.findall(r'sqlalchemy_pool_size\{pid="(\d+)"', body))
            checkouts = sum(
                float(v)
                for v in re.findall(r"^sqlalchemy_pool_checkouts_total\{[^}]*\} (\S+)", body, re.M)
            )
            time.sleep(0.3)
        assert len(pids) == 2
        assert checkouts >= 50  # 60 requests, most check out a connection (404s and /stats don't)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
