"""What the demo found, printed for a person: routes, leaks with origins, pools, where to look."""

from __future__ import annotations

from collections import Counter
from typing import TextIO

from prometheus_client import CollectorRegistry

from observer import Snapshot
from observer.demo._load import LoadResult


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


def write_report(
    out: TextIO,
    *,
    load: LoadResult,
    snapshot: Snapshot,
    registry: CollectorRegistry,
    events: Counter[str],
    base_url: str,
    database: str,
    serving: bool = False,
) -> None:
    def p(line: str = "") -> None:
        print(line, file=out)

    classes: Counter[str] = Counter()
    for (_, status), n in load.statuses.items():
        classes[f"{status // 100}xx"] += n
    outcome = ", ".join(f"{n} {cls}" for cls, n in sorted(classes.items()))
    failed = sum(load.failures.values())
    p()
    p(f"Served {load.requests} requests in {load.seconds:.1f} s on {database}: {outcome}")
    if failed:
        p(
            f"  {failed} requests got no response: "
            + ", ".join(f"{what} x{n}" for what, n in load.failures.most_common())
        )
    p()
    p("Routes: who holds the pool (culprits) and who waits for it (victims)")
    hold = _by(registry, "sqlalchemy_route_connection_hold_seconds_total", "route")
    wait = _by(registry, "sqlalchemy_route_checkout_wait_seconds_total", "route")
    checkouts = _by(registry, "sqlalchemy_route_checkouts_total", "route")
    p(f"  {'route':<24} {'checkouts':>9} {'held (s)':>9} {'waited (s)':>10}")
    for route in sorted(checkouts, key=lambda r: -hold.get(r, 0.0)):
        if checkouts[route] or hold.get(route) or wait.get(route):
            p(
                f"  {route:<24} {checkouts[route]:>9.0f} {hold.get(route, 0.0):>9.2f}"
                f" {wait.get(route, 0.0):>10.2f}"
            )
    p()
    leaks = snapshot["leaks"]
    if leaks:
        p("Session leaks, with the line that opened each session")
        for leak in leaks:
            p(f"  {leak['count']:>4} x {leak['reason']:<18} {leak['route']:<22} {leak['origin']}")
    else:
        p("Session leaks: none found.")
    p()
    created = _total(registry, "sqlalchemy_pools_created_total")
    live = snapshot["live_pools"]
    p(
        f"Pools: {live} alive now, {created:.0f} created since start",
    )
    if created > 2:
        p("  more than one pool per engine: an engine is being created per request (see /stats)")
    timeouts = _total(registry, "sqlalchemy_pool_checkout_timeouts_total")
    reclaimed = _total(registry, "sqlalchemy_pool_connections_reclaimed_total")
    for pool in snapshot["pools"]:
        p(
            f"  {pool['name']}: size {pool['size']}, max {pool['max_connections']}, "
            f"in use {pool['checked_out']}, idle {pool['checked_in']}, waiting {pool['waiting']}"
        )
    p(
        f"  checkout timeouts: {timeouts:.0f}; "
        f"connections reclaimed by the garbage collector: {reclaimed:.0f}"
    )
    if events:
        p()
        p(
            "Log events (structlog; JSON with observer.configure_logging()): "
            + ", ".join(f"{name} x{count}" for name, count in events.most_common())
        )
    p()
    p("Where to look")
    if serving:
        p(f"  {base_url}/metrics   Prometheus metrics (sqlalchemy_pool_*, sqlalchemy_orm_*)")
    else:
        p("  /metrics                  Prometheus metrics: run with --serve to keep the app up")
    p("  dashboards/ and alerts/   Grafana dashboards and alert rules for these metrics")
