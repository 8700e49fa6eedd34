"""A fleet's pool history read from Prometheus: the busiest window of each pool, per process,
what the gauges saw, the hold and wait distributions, the routes at the peak."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

from observer.doctor._prometheus import Labels, Prometheus, PrometheusError
from observer.doctor._sizing import Peak, PoolHistory, ServerRoom

# The window of each rate: at least 5 minutes (20 scrapes of 15 s), longer for long ranges so a
# range query stays near 2000 points a series.
MIN_WINDOW_SECONDS = 300
MAX_ROUTES = 10
# More connections than one process ever holds: the answer is not a pool's.
MAX_PLAUSIBLE_CONNECTIONS = 1e6
# Metrics the sizing needs (observer/metrics/_contract.py names them).
CHECKOUTS = "sqlalchemy_pool_checkouts_total"
TIMEOUTS = "sqlalchemy_pool_checkout_timeouts_total"
HOLD = "sqlalchemy_pool_connection_hold_seconds"
WAIT = "sqlalchemy_pool_checkout_duration_seconds"
CHECKED_OUT = "sqlalchemy_pool_checked_out_connections"
WAITING = "sqlalchemy_pool_waiting_requests"
SIZE = "sqlalchemy_pool_size"
MAX_CONNECTIONS = "sqlalchemy_pool_max_connections"
ROUTE_REQUESTS = "sqlalchemy_route_requests_total"
ROUTE_HOLD = "sqlalchemy_route_connection_hold_seconds_total"
SERVER_MAX = "pg_settings_max_connections"
SERVER_RESERVED = "pg_settings_superuser_reserved_connections"
SERVER_ROLE_RESERVED = "pg_settings_reserved_connections"  # PostgreSQL 16+, 0 before


@dataclass(frozen=True)
class RouteLoad:
    """One route in the busiest window, over the whole job."""

    route: str
    requests_per_second: float
    connections: float  # connection-seconds per second: its share of the concurrency


@dataclass(frozen=True)
class FleetHistory:
    """Everything the sizing reads, for one job over one range."""

    job: str
    start: float
    end: float
    window: float  # seconds of each rate
    pools: list[PoolHistory]
    replicas: int  # the most instances seen at once
    workers: int  # the most processes seen in one instance at once
    routes: list[RouteLoad] = field(default_factory=list)
    server: ServerRoom | None = None  # from the sidecar's pg_settings_* series, when present
    idle_pools: list[str] = field(default_factory=list)  # pools without a checkout in range


def quote(value: str) -> str:
    """A PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def window_for(range_seconds: float) -> float:
    """The rate window for a range: 5 minutes, or range/1000 rounded up to a minute."""
    return float(max(MIN_WINDOW_SECONDS, math.ceil(range_seconds / 1000 / 60) * 60))


def find_job(prom: Prometheus, job: str | None, start: float, end: float, span: str) -> str:
    """``job``, checked to have pool metrics in the range; the only such job when None."""
    jobs = prom.label_values("job", CHECKOUTS, start, end)
    where = f"Prometheus at {prom.shown} over the last {span}"
    if not jobs:
        raise PrometheusError(
            f"{where} has no {CHECKOUTS} series at all: the app's /metrics is not scraped "
            "there, or not in that time; check --prometheus, or give a longer --range"
        )
    listed = ", ".join(jobs[:20]) + (" ..." if len(jobs) > 20 else "")
    if job is None:
        if len(jobs) > 1:
            raise PrometheusError(
                f"{where} has pools of several jobs ({listed}); choose one with --job"
            )
        return jobs[0]
    if job not in jobs:
        raise PrometheusError(
            f"--job {job!r}: {where} has no pool metrics for that job; jobs with them: {listed}"
        )
    return job


def read_history(
    prom: Prometheus, job: str, range_seconds: float, range_text: str, end: float | None = None
) -> FleetHistory:
    """The job's history over the ``range_seconds`` (``range_text``, as given) before ``end``
    (now when None)."""
    end = time.time() if end is None else end
    start = end - range_seconds
    window = window_for(range_seconds)
    sel = f"job={quote(job)}"
    peaks, replicas, workers = _peaks(prom, sel, start, end, window)
    span = f"{int(range_seconds)}s"
    gauges = {
        name: _by_pool(prom.query(expr, end))
        for name, expr in {
            "checked_out": f"max by (pool) (max_over_time({CHECKED_OUT}{{{sel}}}[{span}]))",
            "waiting": f"max by (pool) (max_over_time({WAITING}{{{sel}}}[{span}]))",
            "timeouts": f"sum by (pool) (increase({TIMEOUTS}{{{sel}}}[{span}]))",
            "hold_p99": _p99(HOLD, sel, span),
            "wait_p99": _p99(WAIT, sel, span),
            "size": f"max by (pool) (last_over_time({SIZE}{{{sel}}}[{span}]))",
            "max": f"max by (pool) (last_over_time({MAX_CONNECTIONS}{{{sel}}}[{span}]))",
        }.items()
    }
    pools, idle = [], []
    for pool in sorted(set(peaks) | set(gauges["size"])):
        peak = peaks.get(pool)
        if peak is None or peak.arrival_rate <= 0:
            idle.append(pool)
            continue
        g = {name: values.get(pool) for name, values in gauges.items()}
        pools.append(
            PoolHistory(
                pool, peak, g["checked_out"] or 0.0, g["waiting"] or 0.0, g["timeouts"] or 0.0,
                g["hold_p99"], g["wait_p99"],
                None if g["size"] is None else int(g["size"]),
                None if g["max"] is None else int(g["max"]),
            )
        )  # fmt: skip
    if not pools:
        raise PrometheusError(
            f"--job {job!r}: no checkout in the last {range_text} (the pools were idle or "
            "their counters not scraped); give a --range that covers busy hours"
        )
    for history in pools:
        _check_plausible(prom, job, history)
    busiest = max(pools, key=lambda p: p.peak.concurrency).peak
    routes = _routes(prom, sel, busiest.time, window)
    server = _server(prom, sel, span, end)
    return FleetHistory(job, start, end, window, pools, replicas, workers, routes, server, idle)


def _check_plausible(prom: Prometheus, job: str, history: PoolHistory) -> None:
    """PrometheusError for connection counts no process has (a Prometheus answering nonsense,
    or other series under these names): the sizing would overflow on them."""
    for what, value in (
        ("connections in use at the peak (Little's law)", history.peak.concurrency),
        ("connections checked out at once", history.max_checked_out),
        ("requests waiting at once", history.max_waiting),
    ):
        if not 0 <= value <= MAX_PLAUSIBLE_CONNECTIONS:
            raise PrometheusError(
                f"--prometheus {prom.shown} answered {value:.3g} {what} for pool "
                f"{history.pool!r} of --job {job!r}: no pool holds that many; check that "
                "these series are the app's pool metrics"
            )


def _p99(histogram: str, sel: str, span: str) -> str:
    return (
        f"histogram_quantile(0.99, sum by (pool, le) "
        f"(increase({histogram}_bucket{{{sel}}}[{span}])))"
    )


def _by_pool(vector: list[tuple[Labels, float]]) -> dict[str, float]:
    return {labels.get("pool", ""): value for labels, value in vector if not math.isnan(value)}


def _peaks(
    prom: Prometheus, sel: str, start: float, end: float, window: float
) -> tuple[dict[str, Peak], int, int]:
    """The busiest window of each pool (the highest concurrency of one process, at any
    instance and time), the most instances and the most workers per instance seen at once.

    Counters of a multiprocess app are summed over its workers (one series an instance);
    its gauges keep one series a worker (``pid``): an instance's rate is shared by its workers.
    """
    w, step = f"{int(window)}s", window / 2
    by = "by (instance, pool)"
    series = {
        "hold": f"sum {by} (rate({HOLD}_sum{{{sel}}}[{w}]))",
        "served": f"sum {by} (rate({CHECKOUTS}{{{sel}}}[{w}]))",
        "timeouts": f"sum {by} (rate({TIMEOUTS}{{{sel}}}[{w}]))",
        "workers": f"count {by} ({MAX_CONNECTIONS}{{{sel}}})",
    }
    # (instance, pool) -> time -> name -> value
    table: dict[tuple[str, str], dict[float, dict[str, float]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for name, expr in series.items():
        for labels, points in prom.query_range(expr, start + window, end, step):
            key = (labels.get("instance", ""), labels.get("pool", ""))
            for at, value in points:
                if not math.isnan(value):
                    table[key][at][name] = value
    peaks: dict[str, Peak] = {}
    instances_at: dict[float, set[str]] = defaultdict(set)
    most_workers = 1
    for (instance, pool), moments in table.items():
        for at, v in moments.items():
            workers = max(1, int(v.get("workers", 1)))
            instances_at[at].add(instance)
            most_workers = max(most_workers, workers)
            served, hold_rate = v.get("served", 0.0), v.get("hold", 0.0)
            if served <= 0:
                continue
            arrivals = (served + v.get("timeouts", 0.0)) / workers
            peak = Peak(
                at,
                instance,
                workers,
                arrivals,
                hold_rate / served,
                v.get("timeouts", 0.0) / workers,
            )
            if pool not in peaks or peak.concurrency > peaks[pool].concurrency:
                peaks[pool] = peak
    replicas = max((len(names) for names in instances_at.values()), default=0)
    return peaks, replicas, most_workers


def _routes(prom: Prometheus, sel: str, at: float, window: float) -> list[RouteLoad]:
    """The routes in the window ending at ``at``, the biggest users of connections first."""
    w = f"{int(window)}s"
    requests = {
        labels.get("route", ""): value
        for labels, value in prom.query(
            f"sum by (route) (rate({ROUTE_REQUESTS}{{{sel}}}[{w}]))", at
        )
    }
    held = {
        labels.get("route", ""): value
        for labels, value in prom.query(f"sum by (route) (rate({ROUTE_HOLD}{{{sel}}}[{w}]))", at)
    }
    loads = [
        RouteLoad(route, requests.get(route, 0.0), held.get(route, 0.0))
        for route in set(requests) | set(held)
        if not (math.isnan(requests.get(route, 0.0)) or math.isnan(held.get(route, 0.0)))
    ]
    loads = [r for r in loads if r.requests_per_second > 0 or r.connections > 0]
    loads.sort(key=lambda r: (-r.connections, -r.requests_per_second, r.route))
    return loads[:MAX_ROUTES]


def _server(prom: Prometheus, sel: str, span: str, end: float) -> ServerRoom | None:
    """The server's connection limits from the sidecar's series of the same job, if any."""
    values = {}
    for name in (SERVER_MAX, SERVER_RESERVED, SERVER_ROLE_RESERVED):
        vector = prom.query(f"max(last_over_time({name}{{{sel}}}[{span}]))", end)
        values[name] = vector[0][1] if vector and not math.isnan(vector[0][1]) else None
    most = values[SERVER_MAX]
    if most is None:
        return None
    reserved = int(values[SERVER_RESERVED] or 0) + int(values[SERVER_ROLE_RESERVED] or 0)
    return ServerRoom(int(most), reserved, f"the sidecar's {SERVER_MAX}")
