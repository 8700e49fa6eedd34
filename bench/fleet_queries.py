"""``python -m bench.fleet_queries``: the pools dashboard's fleet queries at fleet scale, raw
against read from the recording rules, side by side on a real Prometheus.

50 processes' worth of series (two jobs, one pool each, the default ``pool`` label, pool
gauges and the checkout-wait histogram, plus two sidecars' ``pg_settings_*``) over two hours at
a 15 s scrape are written as OpenMetrics and turned into TSDB blocks by ``promtool tsdb
create-blocks-from openmetrics``; the shipped recording rules are backfilled from them by
``promtool tsdb create-blocks-from rules`` (two passes: rules that read other rules need the
first pass's blocks). Then each query runs as a dashboard runs it (a range query over the two
hours at a 15 s step), raw (every recorded name replaced by its expression) and recorded,
alternating, for ``--rounds`` rounds; Prometheus's own evaluation time is compared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import median, rotated, spread
from observer.metrics._spec import WAIT_BUCKETS
from observer.monitoring._render import to_yaml
from observer.monitoring._rules import rule_groups
from observer.monitoring.config import MonitoringConfig

STEP = 15  # seconds between samples, and the dashboards' query step
POOL = "postgresql+asyncpg://db:5432/app"
# What the pools dashboard and the alerts read: each as the panel has it (a recorded name).
QUERIES = (
    ("Budget vs server limit: budget", "server:sqlalchemy_pool_max_connections:sum"),
    ("Budget vs server limit: open", "server:sqlalchemy_pool_open_connections:sum"),
    (
        "Fleet budget / server limit",
        "server:sqlalchemy_pool_max_connections_per_available_connections:ratio",
    ),
    ("Budget by job", "job_server:sqlalchemy_pool_max_connections:sum"),
    (
        "Busiest pool utilisation",
        "job_instance_pool:sqlalchemy_pool_checked_out_per_max_connections:ratio",
    ),
    (
        "Checkout wait p99 (SQLAlchemyPoolSlowCheckout)",
        "job_instance_pool:sqlalchemy_pool_checkout_duration_seconds:p99_rate5m",
    ),
)


def _labels(job: str, n: int) -> str:
    return f'job="{job}",instance="{job}-{n}:8000",pool="{POOL}"'


def write_openmetrics(path: Path, processes: int, start: int, end: int, seed: int = 7) -> int:
    """The fleet's series from ``start`` to ``end``; returns how many series."""
    rng = random.Random(seed)
    fleet = [("api" if n < processes * 4 // 5 else "worker", n) for n in range(processes)]
    times = range(start, end + 1, STEP)
    series = 0
    with path.open("w") as out:
        for name, value in (("max_connections", lambda t: 10), ("size", lambda t: 5)):
            out.write(f"# TYPE sqlalchemy_pool_{name} gauge\n")
            for job, n in fleet:
                series += 1
                labels = _labels(job, n)
                out.writelines(
                    f"sqlalchemy_pool_{name}{{{labels}}} {value(t)} {t}\n" for t in times
                )
        busy = {key: [rng.randint(0, 10) for _ in times] for key in fleet}
        for name, pick in (("checked_out", lambda b: b), ("checked_in", lambda b: 10 - b)):
            out.write(f"# TYPE sqlalchemy_pool_{name}_connections gauge\n")
            for job, n in fleet:
                series += 1
                labels = _labels(job, n)
                out.writelines(
                    f"sqlalchemy_pool_{name}_connections{{{labels}}} {pick(b)} {t}\n"
                    for t, b in zip(times, busy[(job, n)], strict=True)
                )
        series += _histogram(out, fleet, times, rng)
        for name, value in (
            ("max_connections", 500),
            ("superuser_reserved_connections", 3),
            ("reserved_connections", 0),
        ):
            out.write(f"# TYPE pg_settings_{name} gauge\n")
            for sidecar in (1, 2):
                series += 1
                labels = f'job="sidecar",instance="sidecar-{sidecar}:9188",server="db:5432"'
                out.writelines(f"pg_settings_{name}{{{labels}}} {value} {t}\n" for t in times)
        out.write("# EOF\n")
    return series


def _histogram(out: Any, fleet: list[tuple[str, int]], times: range, rng: random.Random) -> int:
    """sqlalchemy_pool_checkout_duration_seconds: cumulative buckets growing each scrape."""
    name = "sqlalchemy_pool_checkout_duration_seconds"
    bounds = [f"{b:g}" for b in WAIT_BUCKETS] + ["+Inf"]
    out.write(f"# TYPE {name} histogram\n")
    series = 0
    for job, n in fleet:
        counts = [0] * len(bounds)
        rows: list[list[str]] = [[] for _ in bounds]
        total: list[str] = []
        for t in times:
            added = [rng.randint(0, 20) for _ in bounds]
            running = 0
            for i, more in enumerate(added):
                running += more
                counts[i] += running
                rows[i].append(
                    f'{name}_bucket{{{_labels(job, n)},le="{bounds[i]}"}} {counts[i]} {t}\n'
                )
            total.append(f"{name}_count{{{_labels(job, n)}}} {counts[-1]} {t}\n")
        for row in rows:
            out.writelines(row)
        out.writelines(total)
        series += len(bounds) + 1
    return series


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def prometheus(data: Path) -> Iterator[str]:
    """A Prometheus serving ``data`` (no scrape), until the block ends; yields its URL."""
    port = _free_port()
    config = data.parent / "prometheus.yml"
    config.write_text("global: {}\n")
    args = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}"]
    args += [f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=30d"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/-/ready", timeout=2):
                break
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def backfill_rules(data: Path, groups: dict[str, Any], start: int, end: int) -> None:
    """create-blocks-from rules at the scrape step, one pass per level (a rule reading
    recorded series waits for the pass that wrote them), each pass's blocks moved into
    ``data``."""
    rules = [rule for group in groups["groups"] for rule in group["rules"]]
    depth: dict[str, int] = {}
    for rule in rules:  # in evaluation order: what a rule reads is recorded before it
        reads = [depth[name] for name in depth if _reads(rule["expr"], name)]
        depth[rule["record"]] = 1 + max(reads, default=0)
    for level in range(1, max(depth.values()) + 1):
        batch = [rule for rule in rules if depth[rule["record"]] == level]
        path = data.parent / f"rules-{level}.yaml"
        path.write_text(to_yaml({"groups": [{"name": f"level-{level}", "rules": batch}]}))
        out = data.parent / "rule-blocks"
        shutil.rmtree(out, ignore_errors=True)
        with prometheus(data) as url:
            backfill = [f"--url={url}", f"--start={start}", f"--end={end}", f"--output-dir={out}"]
            backfill.append(f"--eval-interval={STEP}s")
            subprocess.run(
                [
                    "promtool",
                    "tsdb",
                    "create-blocks-from",
                    "rules",
                    *backfill,
                    "--quiet",
                    str(path),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        for block in out.iterdir():
            if block.is_dir():
                shutil.move(str(block), data / block.name)


def _reads(expr: str, name: str) -> bool:
    return re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", expr) is not None


def inline(expr: str, recorded: dict[str, str]) -> str:
    """``expr`` with every recorded name replaced by its expression (recursively)."""
    for _ in range(5):
        for name, body in recorded.items():
            pattern = rf"(?<![\w:]){re.escape(name)}(?![\w:])"
            expr = re.sub(pattern, lambda _match, body=body: f"({body})", expr)  # type: ignore[misc]
    return expr


def query(url: str, expr: str, start: int, end: int) -> tuple[float, dict[str, dict[float, float]]]:
    """Prometheus's evaluation time of one range query, in seconds, and what it returned:
    labels (without the name) -> time -> value."""
    params = {"query": expr, "start": start, "end": end, "step": STEP, "stats": "all"}
    with urllib.request.urlopen(f"{url}/api/v1/query_range?{urllib.parse.urlencode(params)}") as r:
        body = json.load(r)
    assert body["status"] == "success", (expr, body)
    found = {}
    for series in body["data"]["result"]:
        labels = {k: v for k, v in series["metric"].items() if k != "__name__"}
        found[json.dumps(labels, sort_keys=True)] = {t: float(v) for t, v in series["values"]}
    return float(body["data"]["stats"]["timings"]["evalTotalTime"]), found


def _same(raw: dict[str, dict[float, float]], recorded: dict[str, dict[float, float]]) -> bool:
    """The same series, with the same values at every common time: as they are, or with the
    recorded ones one step later (promtool's backfill writes a rule's value one evaluation
    interval after the data it read; a live Prometheus has no such shift)."""
    if not raw or raw.keys() != recorded.keys():
        return False
    return any(
        all(_close(points, recorded[key], shift) for key, points in raw.items())
        for shift in (0, STEP)
    )


# Points of a series that may differ: promtool's rule backfill, on a loaded machine, has been
# seen to give one point of a 2-hour series a neighbouring step's value (twice in CI on the
# floors corner, never on a quiet run; not explained yet). More than this is a real difference.
STRAY_POINTS = 0.05


def _close(raw: dict[float, float], recorded: dict[float, float], shift: int) -> bool:
    common = [t for t in raw if t + shift in recorded]
    differing = sum(
        not math.isclose(raw[t], recorded[t + shift], rel_tol=1e-9, abs_tol=1e-12) for t in common
    )
    return len(common) > len(raw) // 2 and differing <= STRAY_POINTS * len(common)


def agreeing(
    url: str, raw_expr: str, name: str, start: int, end: int, title: str, tries: int = 3
) -> tuple[dict[str, dict[float, float]], dict[str, dict[float, float]]]:
    """Both arms' answers, which must agree. Asked again (up to ``tries`` times, a second
    apart) when they do not: a Prometheus just started on overlapping blocks may still be
    merging them. Fails with the first difference when they never agree."""
    for attempt in range(tries):
        raw = query(url, raw_expr, start, end)[1]
        rec = query(url, name, start, end)[1]
        if _same(raw, rec):
            return raw, rec
        if attempt + 1 < tries:
            time.sleep(1)
    raise AssertionError(f"{title}: raw and recorded values differ: {_difference(raw, rec)}")


def _difference(raw: dict[str, dict[float, float]], rec: dict[str, dict[float, float]]) -> str:
    """The first series or point where the two answers differ, for the failure message."""
    if raw.keys() != rec.keys():
        only_raw, only_rec = (
            sorted(raw.keys() - rec.keys())[:3],
            sorted(rec.keys() - raw.keys())[:3],
        )
        return f"series only raw {only_raw}, only recorded {only_rec}"
    for key, points in raw.items():
        for t, value in points.items():
            other = rec[key].get(t)
            if other is None or not math.isclose(value, other, rel_tol=1e-9, abs_tol=1e-12):
                sizes = f"{len(points)} vs {len(rec[key])} points"
                return f"{key} at {t}: raw {value}, recorded {other} ({sizes})"
    return "no point differs at shift 0 (compare with the recorded ones one step later)"


def run(processes: int, hours: float, rounds: int) -> dict[str, Any]:
    """Build the data, then time every query raw and recorded, alternating."""
    groups = rule_groups(MonitoringConfig())
    recorded = {r["record"]: r["expr"] for g in groups["groups"] for r in g["rules"]}
    with tempfile.TemporaryDirectory(prefix="fleet-queries-") as tmp:
        root = Path(tmp)
        end = (int(time.time()) - 3600) // 3600 * 3600  # whole hours, an hour ago
        start = end - int(hours * 3600)
        series = write_openmetrics(root / "fleet.om", processes, start, end)
        data = root / "data"
        subprocess.run(
            [
                "promtool",
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                str(root / "fleet.om"),
                str(data),
            ],
            check=True,
        )
        backfill_rules(data, groups, start, end)
        # The rules start 5m in (rate windows); query the span both arms cover.
        q_start = start + 600
        results: list[dict[str, Any]] = []
        with prometheus(data) as url:
            arms = [(title, kind) for title, _ in QUERIES for kind in ("raw", "recorded")]
            times: dict[tuple[str, str], list[float]] = {arm: [] for arm in arms}
            sizes: dict[tuple[str, str], int] = {}
            for title, name in QUERIES:  # warm both; they must return the same numbers
                raw, rec = agreeing(url, inline(name, recorded), name, q_start, end, title)
                sizes[(title, "raw")], sizes[(title, "recorded")] = len(raw), len(rec)
            for round_no in range(rounds):
                for title, kind in rotated(arms, round_no):
                    name = dict(QUERIES)[title]
                    expr = name if kind == "recorded" else inline(name, recorded)
                    times[(title, kind)].append(query(url, expr, q_start, end)[0])
        for title, _ in QUERIES:
            raw, rec = times[(title, "raw")], times[(title, "recorded")]
            ratios = [a / b for a, b in zip(raw, rec, strict=True) if b > 0]
            results.append(
                {
                    "query": title,
                    "raw_ms": median(raw) * 1000,
                    "raw_spread": spread(raw),
                    "recorded_ms": median(rec) * 1000,
                    "recorded_spread": spread(rec),
                    "ratio": median(ratios),
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                    "series": [sizes[(title, "raw")], sizes[(title, "recorded")]],
                    "raw_samples": raw,
                    "recorded_samples": rec,
                }
            )
    return {"processes": processes, "hours": hours, "rounds": rounds, "series": series,
            "step": STEP, "queries": results}  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    """The report: one row per query, medians over rounds, the paired ratio and its range."""
    lines = [
        "# Fleet queries: raw vs recording rules",
        "",
        f"{results['processes']} processes, {results['series']} series stored, "
        f"{results['hours']:g} h at a {results['step']} s scrape; each query a range query over "
        f"that span at a {results['step']} s step; Prometheus's evalTotalTime, median over "
        f"{results['rounds']} alternating rounds (spread: (max - min) / median). Ratio: "
        "raw / recorded per round, median (min - max).",
        "",
        "| query | raw ms (spread) | recorded ms (spread) | raw / recorded | series returned |",
        "|---|---|---|---|---|",
    ]
    for q in results["queries"]:
        lines.append(
            f"| {q['query']} | {q['raw_ms']:.1f} ({q['raw_spread']:.0%}) | "
            f"{q['recorded_ms']:.2f} ({q['recorded_spread']:.0%}) | {q['ratio']:.0f}x "
            f"({q['ratio_min']:.0f} - {q['ratio_max']:.0f}) | "
            f"{q['series'][0]} / {q['series'][1]} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=50)
    parser.add_argument("--hours", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None, help="directory for the report")
    args = parser.parse_args()
    results = run(args.processes, args.hours, args.rounds)
    report = markdown(results)
    print(report)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fleet-queries.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "fleet-queries.md").write_text(report)


if __name__ == "__main__":
    main()
