"""``scripts/sqla-suite``: SQLAlchemy's own tests run bare and watched, and the verdict."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.sqla_suite import sdist
from tests.sqla_suite.compare import Verdict, compare, counts, watch_problems

REPO = Path(__file__).resolve().parents[2]
BACKENDS = ("sqlite", "postgresql")
KEEP_RUNS = 5  # run directories (logs and reports) kept in the cache


def say(text: str) -> None:
    print(text, flush=True)  # progress shows as it happens in CI logs


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    release = sdist.installed_version()
    cache = sdist.cache_dir()
    archive = sdist.sdist(release, cache)
    runs = cache / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(runs.iterdir())[: -KEEP_RUNS + 1]:
        shutil.rmtree(old, ignore_errors=True)
    run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))
    root = sdist.unpack(archive, run_dir)
    files = sdist.suite_files(root)
    say(f"sqla-suite: SQLAlchemy {release}, {len(files)} files: {' '.join(files)}")
    say(f"sqla-suite: logs and reports in {run_dir}")
    arms = ("bare", "watched") if args.mode == "compare" else (args.mode,)
    problems: list[str] = []
    closing: list[str] = []
    for backend in BACKENDS if args.backend == "both" else (args.backend,):
        reports: dict[str, dict[str, Any]] = {}
        for arm in arms:
            reports[arm] = report = run_arm(root, run_dir, files, backend, arm, args.pytest_args)
            problems.extend(f"{backend} {arm}: {p}" for p in check_arm(report, release, root))
            show_arm(backend, arm, reports)
        if len(arms) == 1 and arms[0] == "watched":  # nothing to compare, but it must watch
            problems.extend(f"{backend} watched: {p}" for p in watch_problems(reports["watched"]))
        if len(arms) == 2:
            verdict = compare(reports["bare"], reports["watched"])
            show_differences(backend, verdict)
            problems.extend(f"{backend}: {p}" for p in verdict.problems)
            closing.append(closing_part(backend, verdict, reports))
    if problems:
        say("sqla-suite: problems:")
        for problem in problems:
            say(f"  {problem}")
    summary = "; ".join(closing) if closing else f"{args.mode} run only, nothing compared"
    # The last line, and not worded like a pytest summary: CI reads the main suite's.
    say(f"sqla-suite verdict: {'FAILED' if problems else 'OK'} ({summary})")
    return 1 if problems else 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/sqla-suite",
        description="Run SQLAlchemy's own tests (from the sdist of the installed release) bare "
        "and with every engine watched by an Observer; fail on any difference in outcome that "
        "tests/sqla_suite/accepted.py does not explain. Arguments after -- go to pytest.",
    )
    parser.add_argument("--backend", choices=(*BACKENDS, "both"), default="both")
    mode = parser.add_mutually_exclusive_group()
    for name in ("compare", "bare", "watched"):
        mode.add_argument(f"--{name}", dest="mode", action="store_const", const=name)
    parser.set_defaults(mode="compare")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    return parser.parse_args(argv)


def run_arm(
    root: Path, run_dir: Path, files: list[str], backend: str, arm: str, extra: list[str]
) -> dict[str, Any]:
    """One pytest run of SQLAlchemy's suite: its ``--observer-report``, with its wall time."""
    report = run_dir / f"{backend}-{arm}.json"
    log = run_dir / f"{backend}-{arm}.log"
    with database(backend) as db_args:
        command = [
            sys.executable,
            "-s",  # SQLAlchemy's conftest then leaves its ./lib off sys.path
            "-m",
            "pytest",
            "-p",
            "tests.sqla_suite.plugin",
            f"--observer-report={report}",
            *(["--observer-watch"] if arm == "watched" else []),
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",  # the suite's own (-v, --maxfail=250) would cut the run short
            "--strict-markers",
            "-q",
            "--tb=short",
            "-rfE",
            *db_args,
            *files,
            *extra,
        ]
        paths = [str(REPO), os.environ.get("PYTHONPATH", "")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)))
        started = time.perf_counter()
        with log.open("w") as out:
            done = subprocess.run(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - started
    if done.returncode not in (0, 1) or not report.exists():  # 1: some tests failed
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"sqla-suite: {backend} {arm} run failed ({done.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(report.read_text())
    result["wall_seconds"] = seconds
    return result


@contextmanager
def database(backend: str) -> Iterator[list[str]]:
    """The suite's database options: SQLite in memory (pysqlite, plus aiosqlite for the asyncio
    tests, as SQLAlchemy's own CI runs it), or a fresh PostgreSQL database over asyncpg with the
    schemas and extensions README.unittests.rst asks for, dropped afterwards."""
    if backend == "sqlite":
        yield ["--db", "sqlite", "--dbdriver", "sqlite", "--dbdriver", "aiosqlite"]
        return
    from tests.helpers import PG_HOST, PG_PORT, PG_USER, admin

    name = f"sqla_suite_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        raise SystemExit(f"sqla-suite: PostgreSQL on {PG_HOST}:{PG_PORT}: {exc!r}") from None
    try:
        asyncio.run(_prepare(name))
        yield ["--dburi", f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"]
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _prepare(name: str) -> None:
    import asyncpg

    from tests.helpers import PG_HOST, PG_PORT, PG_USER

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=name)
    try:
        await conn.execute(
            "CREATE SCHEMA test_schema; CREATE SCHEMA test_schema_2; "
            "CREATE EXTENSION hstore; CREATE EXTENSION citext"
        )
    finally:
        await conn.close()


def check_arm(report: dict[str, Any], release: str, root: Path) -> list[str]:
    """The run tested the installed release, not the sdist's copy of the library."""
    problems = []
    if report["sqlalchemy_version"] != release:
        problems.append(f"ran SQLAlchemy {report['sqlalchemy_version']}, not {release}")
    if Path(report["sqlalchemy_path"]).is_relative_to(root):
        problems.append(f"imported SQLAlchemy from the sdist ({report['sqlalchemy_path']})")
    return problems


def show_arm(backend: str, arm: str, reports: dict[str, dict[str, Any]]) -> None:
    report = reports[arm]
    say(f"  {backend:<10} {arm:<8} {counts(report)}  ({report['wall_seconds']:.1f} s)")
    if arm != "watched":
        return
    hooks: dict[str, int] = {}
    for errors in report["hook_errors"].values():
        for hook, n in errors.items():
            hooks[hook] = hooks.get(hook, 0) + n
    hook_text = ", ".join(f"{hook}={n}" for hook, n in sorted(hooks.items())) or "none"
    refused = sum(len(v) for v in report["refused"].values())
    say(
        f"  {'':<19} observers={report['tests_watched']} "
        f"watch() calls={report['engines_watched']} (stand-ins for engine-less pools: "
        f"{report['pools_watched']}) refused={refused} checkouts seen={report['checkouts_seen']} "
        f"sessions seen={report['sessions_seen']} hook errors: {hook_text}"
    )
    if "bare" in reports:
        say(f"  {'':<19} watched/bare time {ratios(reports['bare'], report)}")


def show_differences(backend: str, verdict: Verdict) -> None:
    for d in verdict.differences:
        why = f"accepted: {d.reason}" if d.reason else "UNEXPLAINED"
        say(f"  {backend:<10} differs  {d.test_id}: {d.bare} -> {d.watched} ({why})")
    for test_id, errors in verdict.hook_errors.items():
        say(f"  {backend:<10} hooks    {test_id}: {errors}")
    for pattern in verdict.stale:
        say(f"  {backend:<10} note     accepted, but no longer differs (remove it): {pattern}")


def closing_part(backend: str, verdict: Verdict, reports: dict[str, dict[str, Any]]) -> str:
    bare, watched = reports["bare"], reports["watched"]
    return (
        f"{backend}: {len(bare['outcomes'])} tests, {len(verdict.differences)} differing, "
        f"{len(verdict.unexplained)} unexplained, watched/bare time {ratios(bare, watched)}"
    )


def ratios(bare: dict[str, Any], watched: dict[str, Any]) -> str:
    """Watched over bare: the whole run (with the harness's Observer per test) and the test
    bodies only (pytest's call phase, where the observer's hooks do their work)."""
    wall = watched["wall_seconds"] / bare["wall_seconds"]
    call = watched["durations"]["call"] / bare["durations"]["call"]
    return f"x{wall:.3f} (test bodies x{call:.3f})"


if __name__ == "__main__":
    sys.exit(main())
