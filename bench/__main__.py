"""``python -m bench``: every benchmark, side by side, with a Markdown report.

``--tiny`` runs the same code on tiny counts in seconds (what CI runs to keep the harness from
rotting; its figures mean nothing). Results go to ``--out`` (``bench/results/`` for a full run)
as ``latest.json`` and ``latest.md``; the report is printed too.

``--check`` runs the parts the targets need (checkout and e2e, unless ``--only`` says
otherwise), prints the targets table and exits 1 unless every target is met (a miss the run
cannot tell from its own A/A noise counts as not met). Not part of CI's required path: a shared
CI machine is too noisy for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.common import (
    PgServer,
    create_database,
    drop_database,
    pin,
    pin_backends,
    pinning_plan,
    rotated,
    versions,
)

PARTS = ("checkout", "instructions", "asgi", "e2e", "scale")
CHECK_PARTS = ("checkout", "instructions", "e2e")  # what report.targets() is computed from


@dataclasses.dataclass(frozen=True)
class Sizes:
    cycles: int  # checkout cycles per arm and round (no statement)
    select_cycles: int  # cycles with SELECT 1, and sessions, per arm and round
    checkout_rounds: int
    asgi_requests: int  # in-process requests per endpoint, arm and round
    asgi_rounds: int
    e2e_rounds: int
    e2e_seconds: float
    e2e_warmup: float
    e2e_connections: int
    render_pools: int
    render_routes: int
    renders: int
    memory_cycles: int
    memory_requests: int
    memory_distinct: int
    traced_cycles: int
    traced_requests: int
    traced_distinct: int
    instruction_cycles: int  # checkout cycles per valgrind run (0: the part is skipped)
    instruction_sessions: int
    instruction_requests: int  # of /db (twice as many of /noop) per valgrind run


FULL = Sizes(
    cycles=5_000,
    select_cycles=1_000,
    checkout_rounds=9,
    asgi_requests=2_000,
    asgi_rounds=6,
    e2e_rounds=6,
    e2e_seconds=8,
    e2e_warmup=2,
    e2e_connections=8,
    render_pools=10,
    render_routes=200,
    renders=20,
    memory_cycles=1_000_000,
    memory_requests=100_000,
    memory_distinct=10_000,
    traced_cycles=100_000,
    traced_requests=10_000,
    traced_distinct=10_000,
    instruction_cycles=1_000,
    instruction_sessions=200,
    instruction_requests=1_000,
)
TINY = Sizes(
    cycles=200,
    select_cycles=50,
    checkout_rounds=2,
    asgi_requests=50,
    asgi_rounds=1,
    e2e_rounds=1,
    e2e_seconds=2,
    e2e_warmup=1,
    e2e_connections=8,
    render_pools=10,
    render_routes=200,
    renders=3,
    memory_cycles=2_000,
    memory_requests=500,
    memory_distinct=100,
    traced_cycles=1_000,
    traced_requests=200,
    traced_distinct=100,
    instruction_cycles=0,  # valgrind's start-up alone takes minutes: not in --tiny
    instruction_sessions=0,
    instruction_requests=0,
)

ASGI_ARMS = ("bare", "observer", "otel", "bare (A/A)", "passthrough (the floor)")


def _worker(task: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.worker", task, json.dumps(kwargs)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{process.args!r} failed with exit code {process.returncode}")
    parsed: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return parsed


def run_asgi(
    server: PgServer, database: str, sizes: Sizes, plan: tuple[int, int] | None
) -> dict[str, Any]:
    """In-process ASGI per-request cost: one fresh process per arm and round, alternating."""
    core = plan[0] if plan else None
    per_round: dict[str, dict[str, list[float]]] = {
        "/noop": {},
        "/db": {},
        "/noop cpu": {},
        "/db cpu": {},
    }
    statuses: dict[str, dict[str, int]] = {}
    for r in range(sizes.asgi_rounds):
        for arm in rotated(ASGI_ARMS, r):
            process = _worker(
                "asgi_overhead",
                arm=arm.split(" ")[0],
                dsn=server.url(database),
                requests=sizes.asgi_requests,
                endpoints=["/noop", "/db"],
                core=core,
            )
            if plan and r == 0:
                time.sleep(0.5)
                pin_backends(server, database, plan[1])
            found = _result(process)
            for endpoint, arms in per_round.items():
                arms.setdefault(arm, []).append(found[endpoint])
            for status, n in found["statuses"].items():
                statuses.setdefault(arm, {})
                statuses[arm][status] = statuses[arm].get(status, 0) + n
    return {
        "requests": sizes.asgi_requests,
        "rounds": sizes.asgi_rounds,
        "per_round": per_round,
        "statuses": statuses,
    }


def run_scale(
    server: PgServer, database: str, sizes: Sizes, plan: tuple[int, int] | None
) -> dict[str, Any]:
    from bench import scale

    dsn = server.url(database)
    result: dict[str, Any] = {
        "render": scale.metrics_render(dsn, sizes.render_pools, sizes.render_routes, sizes.renders)
    }
    # Memory runs measure memory, not time: the two long ones run side by side, one per core.
    cores = list(plan) if plan else [None, None]
    for suffix, cycles, requests, distinct, trace in (
        ("", sizes.memory_cycles, sizes.memory_requests, sizes.memory_distinct, False),
        ("_traced", sizes.traced_cycles, sizes.traced_requests, sizes.traced_distinct, True),
    ):
        checkout = _worker(
            "checkout_memory", dsn=dsn, cycles=cycles, checkpoints=10, trace=trace, core=cores[0]
        )
        requests_ = _worker(
            "asgi_memory",
            dsn=dsn,
            requests=requests,
            distinct=distinct,
            checkpoints=10,
            trace=trace,
            core=cores[1],
        )
        result["checkout_memory" + suffix] = _result(checkout)
        result["asgi_memory" + suffix] = _result(requests_)
    return result


def machine() -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    calibration = subprocess.run(
        [sys.executable, "-m", "timeit", "sum(range(1000))"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "calibration": calibration,
        "loadavg": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--tiny", action="store_true", help="tiny counts: seconds, figures meaningless"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="run what the targets need (checkout, e2e) and exit 1 unless every target is met",
    )
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated parts (default: all of {', '.join(PARTS)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where latest.json and latest.md go (default: bench/results for a "
        "full run, nowhere for --tiny)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of every side-by-side comparison (more: slower, less noise)",
    )
    args = parser.parse_args(argv)
    only = args.only or (",".join(CHECK_PARTS) if args.check else ",".join(PARTS))
    parts = [p.strip() for p in only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; known: {', '.join(PARTS)}")
    sizes = TINY if args.tiny else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        sizes = dataclasses.replace(
            sizes, checkout_rounds=args.rounds, asgi_rounds=args.rounds, e2e_rounds=args.rounds
        )
    out = args.out
    if out is None and not args.tiny and not args.check:
        out = Path(__file__).resolve().parent / "results"

    plan = pinning_plan()
    if plan:
        pin(os.getpid(), plan[0])
    server = PgServer()
    started = time.monotonic()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "tiny" if args.tiny else ("full" if set(parts) >= set(PARTS) else "partial"),
        "sizes": dataclasses.asdict(sizes),
        "machine": machine(),
        "versions": versions(),
        "pinning": {"code_under_test": plan[0], "postgres_and_load": plan[1]} if plan else None,
    }
    database = create_database(server)
    try:
        if "checkout" in parts:
            from bench import checkout

            found = checkout.run_sync(
                server=server,
                database=database,
                cycles=sizes.cycles,
                select_cycles=sizes.select_cycles,
                rounds=sizes.checkout_rounds,
                pg_core=plan[1] if plan else None,
                cpu_only={
                    "cycles": sizes.cycles,
                    "session_cycles": sizes.cycles // 4,
                    "rounds": sizes.checkout_rounds,
                },
            )
            results["checkout"] = [{**dataclasses.asdict(r), "summary": r.summary()} for r in found]
        if "instructions" in parts and sizes.instruction_cycles:
            from bench import instructions

            if instructions.available():
                results["instructions"] = instructions.run(
                    server.url(database),
                    sizes.instruction_cycles,
                    sizes.instruction_sessions,
                    sizes.instruction_requests,
                )
            else:
                print("valgrind is not installed: no instruction counts", file=sys.stderr)
        if "asgi" in parts:
            results["asgi"] = run_asgi(server, database, sizes, plan)
        if "e2e" in parts:
            from bench import e2e

            found_e2e = e2e.run(
                server,
                database,
                rounds=sizes.e2e_rounds,
                seconds=sizes.e2e_seconds,
                warmup=sizes.e2e_warmup,
                connections=sizes.e2e_connections,
                plan=plan,
            )
            results["e2e"] = {
                **dataclasses.asdict(found_e2e),
                "summary": {ep: found_e2e.summary(ep) for ep in e2e.ENDPOINTS},
            }
        if "scale" in parts:
            results["scale"] = run_scale(server, database, sizes, plan)
    finally:
        drop_database(server, database)
    results["seconds"] = round(time.monotonic() - started, 1)
    text = report.markdown(results)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "latest.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (out / "latest.md").write_text(text)
    if args.check:
        return check(results)
    return 0


def check(results: dict[str, Any]) -> int:
    """Print each target's verdict; 0 when every one is met, else 1."""
    found = report.targets(results)
    width = max((len(target) for target, _, _ in found), default=0)
    print("\n--check:")
    for target, measured, verdict in found:
        print(f"  {verdict.split(':')[0]:>14}  {target:<{width}}  {measured}")
    missed = [target for target, _, verdict in found if verdict != "met"]
    if not found:
        print("  no target was measured (run the checkout and e2e parts)")
        return 1
    print(f"--check: {len(found) - len(missed)} of {len(found)} targets met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
