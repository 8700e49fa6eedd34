"""What the demo found, printed for a person: answers, routes, leaks, pools, fixes, next steps."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from prometheus_client import CollectorRegistry

from observer import Snapshot
from observer.demo._load import LoadResult
from observer.demo._quiet import Findings

Say = Callable[..., None]
ORIGINS = "sqlalchemy_orm_session_leak_origins_total"


@dataclass
class Report:
    """Everything the report is computed from."""

    load: LoadResult
    snapshot: Snapshot
    registry: CollectorRegistry
    findings: Findings
    base_url: str
    live_page: str  # its path
    database: str
    pool_timeout: float  # seconds
    answered_503: Counter[str]  # route template -> pool timeouts the app answered with 503
    serving: bool


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == name:
                found[tuple(sorted(s.labels.items()))] = s.value
    return found


def _by(registry: CollectorRegistry, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in _samples(registry, name).items()}


def _total(registry: CollectorRegistry, name: str) -> float:
    return sum(_samples(registry, name).values())


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{what} x{n}" for what, n in counter.most_common())


def _answers(say: Say, r: Report) -> None:
    """How many requests got which status, from which routes."""
    load = r.load
    say(f"Served {load.requests} requests in {load.seconds:.1f} s:")
    by_status: dict[int, Counter[str]] = {}
    for (template, status), n in load.statuses.items():
        by_status.setdefault(status, Counter())[template] += n
    for status, templates in sorted(by_status.items(), key=lambda item: -item[1].total()):
        detail = _counts(templates)
        if status == 503 and r.answered_503:
            detail += (
                f"; {r.answered_503.total()} of them pool timeouts (no connection free within "
                f"pool_timeout, {r.pool_timeout:g} s)"
            )
        say(f"  {status} x{templates.total():<4} {detail}")
    if load.failures:
        say(f"  no response x{load.failures.total()}: {_counts(load.failures)}")


def _routes(say: Say, registry: CollectorRegistry) -> None:
    say("Routes: who holds the pool (culprits) and who waits for it (victims)")
    hold = _by(registry, "sqlalchemy_route_connection_hold_seconds_total", "route")
    wait = _by(registry, "sqlalchemy_route_checkout_wait_seconds_total", "route")
    checkouts = _by(registry, "sqlalchemy_route_checkouts_total", "route")
    idle = _by(registry, "sqlalchemy_route_connection_idle_seconds_total", "route")
    say(f"  {'route':<24} {'checkouts':>9} {'held (s)':>9} {'idle (s)':>9} {'waited (s)':>10}")
    for route in sorted(checkouts, key=lambda r: -hold.get(r, 0.0)):
        if checkouts[route] or hold.get(route) or wait.get(route):
            say(
                f"  {route:<24} {checkouts[route]:>9.0f} {hold.get(route, 0.0):>9.2f}"
                f" {idle.get(route, 0.0):>9.2f} {wait.get(route, 0.0):>10.2f}"
            )
    say("  (idle: held with no statement running, e.g. across an HTTP call in a transaction)")


def _leaks(say: Say, r: Report) -> None:
    """The lines of code that leaked, from the origin counter, each with the routes the
    snapshot saw leak from it (the counter has no route label)."""
    lines = {
        (labels["origin"], labels["reason"]): count
        for labels, count in (
            (dict(key), value) for key, value in _samples(r.registry, ORIGINS).items()
        )
        if count
    }
    if not lines:
        say("Session leaks: none found.")
        return
    routes: dict[tuple[str, str], set[str]] = {}
    for leak in r.snapshot["leaks"]:
        routes.setdefault((leak["origin"], leak["reason"]), set()).add(leak["route"])
    say(f"Session leaks by the line of code that began each session ({ORIGINS})")
    for (origin, reason), count in sorted(lines.items(), key=lambda item: -item[1]):
        on = ", ".join(sorted(routes.get((origin, reason), ()))) or "?"
        say(f"  {count:>4.0f} x {reason:<18} {origin} <- {on}")


def _pools(say: Say, r: Report) -> None:
    created = _total(r.registry, "sqlalchemy_pools_created_total")
    watched = len(r.snapshot["pools"])
    say(f"Pools: {r.snapshot['live_pools']} alive now, {created:.0f} created since start")
    strays = {
        route for route, what, _ in r.findings.problems if what == "pool.created_after_startup"
    }
    if created > watched and strays:
        say(
            f"  {created - watched:.0f} more than the {watched} watched: an engine is being "
            f"created per request, on {', '.join(sorted(strays))}"
        )
    for pool in r.snapshot["pools"]:
        say(
            f"  {pool['name']}: size {pool['size']}, max {pool['max_connections']}, "
            f"in use {pool['checked_out']}, idle {pool['checked_in']}, waiting {pool['waiting']}"
        )
    timeouts = _total(r.registry, "sqlalchemy_pool_checkout_timeouts_total")
    reclaimed = _total(r.registry, "sqlalchemy_pool_connections_reclaimed_total")
    say(
        f"  checkout timeouts: {timeouts:.0f}; "
        f"connections reclaimed by the garbage collector: {reclaimed:.0f}"
    )


def _fixes(say: Say, findings: Findings) -> None:
    """Each route a log event blamed, the app lines it named, and the events' hints."""
    if findings.events:
        say(f"Log events (counted here, not printed): {_counts(findings.events)}")
    if not findings.problems:
        return
    say()
    say("How to fix it (the hints of those log events, by route)")
    by_route: dict[str, Counter[tuple[str, str]]] = {}
    for (route, what, hint), n in findings.problems.items():
        by_route.setdefault(route, Counter())[(what, hint)] += n
    for route, problems in sorted(by_route.items(), key=lambda item: -item[1].total()):
        origins = findings.origins.get(route, Counter())
        where = f", at {', '.join(o for o, _ in origins.most_common(2))}" if origins else ""
        say(f"  {route}{where}")
        hints: dict[str, list[str]] = {}
        for (what, hint), n in problems.most_common():
            hints.setdefault(hint, []).append(f"{what} x{n}")
        for hint, whats in hints.items():
            say(f"    - {hint} [{'; '.join(whats)}]")


def _monitoring(root: Path) -> tuple[list[str], int] | None:
    """The shipped dashboards' titles and the number of alert rules, read from a clone."""
    dashboards = sorted((root / "dashboards").glob("*.json"))
    alerts = root / "alerts" / "pool-observer-alerts.yaml"
    if not dashboards or not alerts.is_file():
        return None
    titles = [
        str(json.loads(path.read_text()).get("title", path.stem)).split(" / ")[-1]
        for path in dashboards
    ]
    return titles, len(re.findall(r"^\s*- alert:", alerts.read_text(), re.MULTILINE))


def _near(root: Path, name: str) -> str:
    """``root/name`` relative to the working directory when it is below it."""
    path = root / name
    return f"{path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}/"


def _next_steps(say: Say, r: Report, root: Path) -> None:
    say("What to do next")
    say("  Instrument your own app: three lines (README.md, Quickstart)")
    say('      pip install ".[asyncpg,fastapi]"     # from a clone of pool-observer')
    say("      import observer")
    say(f'      observer.instrument(app, engine, live_page_path="{r.live_page}")')
    say(f"  The live page:  {r.base_url}{r.live_page}")
    say(f"  The metrics:    {r.base_url}/metrics (sqlalchemy_pool_*, sqlalchemy_orm_*, ...)")
    if not r.serving:
        say("      both end with this run: scripts/demo --serve keeps them up")
    shipped = _monitoring(root)
    if shipped is None:
        say("  Dashboards and alerts: observer render --out DIR")
        say('      (needs pip install "pool-observer[monitoring]")')
        return
    titles, alerts = shipped
    say(
        f"  Dashboards and alerts: {len(titles)} Grafana dashboards in {_near(root, 'dashboards')} "
        f"({', '.join(titles)}), {alerts} alert rules in {_near(root, 'alerts')}"
    )


def _errors(say: Say, findings: Findings) -> None:
    """Errors logged with a traceback (none expected: pool timeouts are answered 503)."""
    if findings.errors:
        say(f"Errors logged, counted here instead of tracebacks: {findings.errors.total()}")
        for summary, n in findings.errors.most_common(5):
            say(f"  {n:>4} x {summary}")
    else:
        say("Errors logged with a traceback: none.")


def write_report(out: TextIO, report: Report, root: Path | None = None) -> None:
    """Print the report; ``root`` is where the shipped dashboards and alerts are looked for
    (by default the clone this package runs from, if it runs from one)."""

    def say(line: str = "") -> None:
        print(line, file=out)

    if root is None:
        root = Path(__file__).resolve().parents[2]
    say()
    _answers(say, report)
    say()
    _routes(say, report.registry)
    say()
    _leaks(say, report)
    say()
    _pools(say, report)
    say()
    _fixes(say, report.findings)
    say()
    _errors(say, report.findings)
    say()
    _next_steps(say, report, root)
