"""The benchmark harness runs end to end in its tiny mode (CI keeps it from rotting).

Nothing here looks at a timing: only that every part ran, every arm is there, and the counts
the arms report match the work that was driven.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PG_HOST, PG_PORT, PG_USER, postgres_up, require

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_benchmark_run_produces_every_arm_with_the_right_counts(tmp_path: Path) -> None:
    require(postgres_up(), f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}")
    require(shutil.which("wrk") is not None, "wrk is not installed (apt-get install wrk)")
    env = dict(
        os.environ,
        OBSERVER_TEST_PGHOST=PG_HOST,
        OBSERVER_TEST_PGPORT=str(PG_PORT),
        OBSERVER_TEST_PGUSER=PG_USER,
    )
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    report = (tmp_path / "latest.md").read_text()
    sizes = results["sizes"]

    # 1. checkout cycles and sessions: every arm, every round, each arm really attached
    benches = {b["name"]: b for b in results["checkout"]}
    assert set(benches) == {
        "cycle",
        "select1",
        "session",
        "cycle (sync, SQLite)",
        "session (sync, SQLite)",
    }
    for name, bench in benches.items():
        rounds = sizes["checkout_rounds"]
        cycles = {
            "cycle": sizes["cycles"],
            "cycle (sync, SQLite)": sizes["cycles"],
            "session (sync, SQLite)": sizes["cycles"] // 4,
        }.get(name, sizes["select_cycles"])
        arms = bench["per_round"]
        assert {"bare", "bare (A/A)", "otel-sqlalchemy"} <= set(arms)
        assert all(len(values) == rounds and min(values) > 0 for values in arms.values())
        for arm, counted in bench["counted"].items():
            if arm.startswith("observer"):
                assert counted == [cycles] * rounds, (name, arm, counted)
            elif arm == "otel-sqlalchemy":  # a connect span, plus one per statement
                per_cycle = 1 if name.startswith("cycle") else 2
                assert counted == [cycles * per_cycle] * rounds, (name, counted)
        if name.startswith("session"):
            assert {"observer, capture_origin=False", "observer, capture_origin=True"} <= set(arms)
        else:
            assert {"observer", "observer, in a request"} <= set(arms)

    # 2. in-process ASGI: every arm, every request answered 200
    asgi = results["asgi"]
    for endpoint in ("/noop", "/db", "/noop cpu", "/db cpu"):
        arms = asgi["per_round"][endpoint]
        assert set(arms) == {"bare", "observer", "otel", "bare (A/A)", "passthrough (the floor)"}
        assert all(len(values) == sizes["asgi_rounds"] for values in arms.values())
    for statuses in asgi["statuses"].values():
        assert set(statuses) == {"200"}

    # 3. end to end: every arm and endpoint, no errors, the observer saw the /db requests; each
    # server reported its CPU time and garbage collections for every measured run
    from bench.e2e import ARMS

    e2e = results["e2e"]
    for endpoint in ("/noop", "/db"):
        rows = {row["arm"]: row for row in e2e["summary"][endpoint]}
        assert set(rows) == set(ARMS)
        assert {"bare", "observer", "bare (A/A)", "passthrough (the floor)"} <= set(rows)
        assert all(row["errors"] == 0 and row["rps"] > 0 for row in rows.values())
        assert all(row["cpu_us"] > 0 and len(row["gc_per_10k"]) == 3 for row in rows.values())
        for runs in e2e["runs"][endpoint].values():
            assert len(runs) == sizes["e2e_rounds"]
    for seen in e2e["db_checkouts"]:
        assert seen["status"] == 200
        assert seen["route_db_checkouts"] >= seen["wrk_db_requests"] > 0

    # 4. scale: the exposition has every pool and route; memory runs counted everything
    scale = results["scale"]
    render = scale["render"]
    assert render["pool_series"] == 10
    assert render["route_series"] == 201  # 200 routes and route="none"
    checkout = scale["checkout_memory"]
    assert checkout["counted"] == checkout["expected"]
    assert len(checkout["readings"]) == 10
    asgi_memory = scale["asgi_memory"]
    driven = asgi_memory["requests"] + asgi_memory["warmup"]
    assert asgi_memory["requests"] == sizes["memory_requests"]
    assert asgi_memory["statuses"] == {"200": driven}
    assert asgi_memory["route_checkouts"] == driven
    assert asgi_memory["route_series"] == 2  # the one route template and "none"
    assert asgi_memory["sessions_open"] == 0
    assert scale["asgi_memory_traced"]["readings"][-1]["traced"] > 0

    assert report.index("## Targets (ratios to bare") < report.index("## 1. Checkout")


def _e2e_rows(observer: float, aa: float = 1.0) -> list[dict[str, object]]:
    return [
        {"arm": "bare", "rps_ratio_paired": 1.0},
        {"arm": "bare (A/A)", "rps_ratio_paired": aa},
        {"arm": "observer", "rps_ratio_paired": observer, "cpu_ratio_paired": 1.01},
    ]


def _bench(name: str, arms: dict[str, float], aa: float = 1.0) -> dict[str, object]:
    rows = [{"arm": "bare", "ratio_paired": 1.0, "cpu_ratio_paired": 1.0, "delta_us": 0.0}]
    rows.append({"arm": "bare (A/A)", "ratio_paired": aa, "cpu_ratio_paired": aa, "delta_us": 0})
    for arm, ratio in arms.items():
        delta = (ratio - 1) * 30  # µs on a 30 µs cycle
        rows.append(
            {"arm": arm, "ratio_paired": ratio, "cpu_ratio_paired": ratio, "delta_us": delta}
        )
    return {"name": name, "summary": rows}


def _results(noop: float, cycle: float, session: float, aa: float = 1.0) -> dict[str, object]:
    cycle_arms = {"observer": cycle, "observer, in a request": cycle, "otel-sqlalchemy": 3.0}
    return {
        "e2e": {"summary": {"/noop": _e2e_rows(noop, aa), "/db": _e2e_rows(0.99, aa)}},
        "checkout": [
            _bench("cycle", cycle_arms, aa),
            _bench("session", {"observer, capture_origin=True": session}, aa),
        ],
    }


def test_check_exits_non_zero_unless_every_target_is_met(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python -m bench --check``'s verdicts, on made-up figures (no timing): the targets are
    /noop >= 0.98 and /db >= 0.97 of bare, checkout <= 1.06 and session <= 1.03 x bare; a miss
    no larger than the A/A noise is "not resolvable", and fails the check too."""
    from bench.__main__ import check
    from bench.report import targets

    met = _results(noop=0.985, cycle=1.05, session=1.02)
    assert [verdict for _, _, verdict in targets(met)] == ["met"] * 5
    assert check(met) == 0
    assert "5 of 5 targets met" in capsys.readouterr().out

    for missed in (
        _results(noop=0.95, cycle=1.05, session=1.02),
        _results(noop=0.985, cycle=1.07, session=1.02),
        _results(noop=0.985, cycle=1.05, session=1.04),
    ):
        assert [v for _, _, v in targets(missed)].count("missed") == 1
        assert check(missed) == 1

    noisy = _results(noop=0.975, cycle=1.05, session=1.02, aa=1.02)
    assert targets(noisy)[0][2].startswith("not resolvable")
    assert check(noisy) == 1


def test_with_instruction_counts_the_checkout_and_session_targets_are_decided_on_them() -> None:
    """With valgrind's counts in the results (bench/instructions.py), the checkout and session
    targets are decided on instructions per operation, not on times that move with the
    machine's load; the A/A pair of the counts is their noise floor."""
    from bench.report import targets

    results = _results(noop=0.985, cycle=1.20, session=1.20)  # times say: missed
    results["instructions"] = {
        "sizes": {"cycle": 1000, "session": 200},
        "per_op": {
            "cycle": {
                "bare": 200_000.0,
                "bare (A/A)": 201_000.0,
                "observer": 210_000.0,
                "observer, in a request": 211_000.0,
            },
            "session": {
                "bare": 900_000.0,
                "bare (A/A)": 899_000.0,
                "observer, capture_origin=False": 915_000.0,
                "observer, capture_origin=True": 920_000.0,
            },
        },
    }
    verdicts = {target: verdict for target, _, verdict in targets(results)}
    cycle = next(t for t in verdicts if t.startswith("checkout cycle (asyncpg)"))
    session = next(t for t in verdicts if t.startswith("ORM session"))
    assert "(instructions)" in cycle
    assert "(instructions)" in session
    assert verdicts[cycle] == "met"  # 1.055 against 1.06, A/A 1.005
    assert verdicts[session] == "met"  # 1.022 against 1.03, A/A 0.999
    assert len([t for t in verdicts if t.startswith("checkout cycle (asyncpg)")]) == 1
