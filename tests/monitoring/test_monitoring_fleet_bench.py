"""bench.fleet_queries runs end to end on tiny data (it cannot rot): both arms of every query
ran every round on the same backfilled blocks and returned the same series and values (the
harness asserts that). Nothing here looks at a timing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require
from tests.monitoring.shipped import ROOT

pytestmark = pytest.mark.promtool


def test_the_fleet_queries_bench_runs_every_query_raw_and_recorded(tmp_path: Path) -> None:
    """3 processes over half an hour, 2 rounds: a report row per query, both arms timed each
    round, the same number of series from both, and the series the data generator wrote."""
    require(shutil.which("prometheus") is not None, "prometheus is not installed")
    args = [sys.executable, "-m", "bench.fleet_queries", "--processes", "3", "--hours", "0.5"]
    done = subprocess.run(
        [*args, "--rounds", "2", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "fleet-queries.json").read_text())
    assert results["series"] == 3 * (4 + 20) + 6  # 4 gauges and 19 buckets + count, 2 sidecars
    assert len(results["queries"]) == 6
    for query in results["queries"]:
        assert len(query["raw_samples"]) == len(query["recorded_samples"]) == 2, query["query"]
        assert query["series"][0] == query["series"][1] > 0, query["query"]
    assert (tmp_path / "fleet-queries.md").read_text().count("\n| ") == 7  # header and 6 rows
