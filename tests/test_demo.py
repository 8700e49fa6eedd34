"""The README's first command: ``observer demo`` runs to completion and names the leaks."""

from __future__ import annotations

import re

import pytest

from observer.cli import main


def run_demo(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["demo", "--short", "--no-progress", *args]) == 0
    return capsys.readouterr().out


def check_summary(out: str) -> None:
    assert re.search(r"Served 150 requests in [\d.]+ s on .*: \d+ 2xx", out)
    leaks = {
        (m["reason"], m["route"]): m["origin"]
        for m in re.finditer(
            r"^\s+\d+ x (?P<reason>\w+)\s+(?P<route>\S+)\s+(?P<origin>\S+ in \w+)$", out, re.M
        )
    }
    # the two leaking endpoints, each with the line that opened the session; nothing else leaks
    assert {route for _, route in leaks} == {"/cart/{cart_id}", "/checkout/{cart_id}"}
    assert all(
        origin.startswith("observer/demo/app.py:") or "/observer/demo/app.py:" in origin
        for origin in leaks.values()
    )
    assert re.search(r"/reports/daily\s+\d+\s+[\d.]+", out)  # the route holding connections
    assert "an engine is being created per request" in out
    assert "/metrics" in out


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_demo_on_the_embedded_database(capsys: pytest.CaptureFixture[str]) -> None:
    """With no URL the demo runs on an embedded SQLite file and finds both leaking routes."""
    check_summary(run_demo(capsys))


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_demo_on_postgresql(capsys: pytest.CaptureFixture[str], pg_url: str) -> None:
    """With --database-url the same demo runs on PostgreSQL and finds the same leaks."""
    check_summary(run_demo(capsys, "--database-url", pg_url))


def test_demo_rejects_a_sync_url(capsys: pytest.CaptureFixture[str]) -> None:
    """A URL without an async driver fails at once with the fix."""
    assert main(["demo", "--database-url", "postgresql://db/app"]) == 2
    assert "needs an async driver, e.g. postgresql+asyncpg://" in capsys.readouterr().err
