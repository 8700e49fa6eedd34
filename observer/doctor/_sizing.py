"""Pool sizes from a fleet's history: Little's law at the peak, headroom, bursts, and the server's
room for replicas; each number with the sentence that explains it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Room above the busiest window's concurrency: traffic grows, and a full pool makes requests wait.
HEADROOM = 1.25
# Arrivals within a window are random: at a mean concurrency L, the instantaneous number in use
# exceeds L + 3 sqrt(L) rarely (Poisson, ~0.1 % of the time); overflow connections cover that.
BURST_SIGMAS = 3.0
# A waiting checkout gets the first connection that comes back; with every connection held by a
# normal request, one comes back within the p99 hold. Waiting several times that means the pool
# is stuck (a leak, a slow query storm): fail fast instead.
TIMEOUT_HOLDS = 3.0
MIN_POOL_TIMEOUT = 1.0  # below this, a GC pause or a slow network turns into errors


@dataclass(frozen=True)
class Peak:
    """The busiest window of one process of one pool: Little's law's inputs there."""

    time: float  # Unix time at the end of the window
    instance: str
    workers: int  # processes of that instance sharing its counters (multiprocess mode)
    arrival_rate: float  # checkouts asked for per second, per process (timed-out ones included)
    hold_seconds: float  # mean time a connection stayed checked out
    timeout_rate: float = 0.0  # of which timed out, per second, per process

    @property
    def concurrency(self) -> float:
        """Little's law: connections in use on average = arrival rate x mean hold."""
        return self.arrival_rate * self.hold_seconds


@dataclass(frozen=True)
class PoolHistory:
    """What Prometheus remembers about one pool (by its ``pool`` label) over the range."""

    pool: str
    peak: Peak
    max_checked_out: float = 0.0  # highest sample of the checked-out gauge, any process
    max_waiting: float = 0.0  # highest sample of the waiting gauge, any process
    timeouts: float = 0.0  # checkout timeouts over the range, the whole job
    hold_p99: float | None = None  # seconds, over the range, the whole job
    wait_p99: float | None = None
    pool_size: int | None = None  # configured now (the gauge), None when unknown
    max_connections: int | None = None  # configured now; -1 unbounded


@dataclass(frozen=True)
class Sizing:
    """The recommended settings of one pool, per process, and why."""

    pool: str
    pool_size: int
    max_overflow: int
    pool_timeout: float
    concurrency: float  # Little's law at the peak
    burst: float  # the most connections in use at once to plan for
    reasons: list[str] = field(default_factory=list)

    @property
    def max_connections(self) -> int:
        """pool_size + max_overflow: the most connections one process opens."""
        return self.pool_size + self.max_overflow


def _g(value: float) -> str:
    """A number for a sentence: 3 significant digits."""
    return f"{value:.3g}"


def size_pool(history: PoolHistory, request_timeout: float) -> Sizing:
    """``pool_size``, ``max_overflow`` and ``pool_timeout`` for one process of ``history``'s
    pool; ``request_timeout`` caps ``pool_timeout`` at a third of it (fail before the client
    gives up)."""
    peak = history.peak
    load = peak.concurrency
    pool_size = max(1, math.ceil(HEADROOM * load - 1e-9))
    random_burst = load + BURST_SIGMAS * math.sqrt(load)
    # Waiting callers were demand the pool could not serve: in use + waiting, at the worst sample.
    seen = history.max_checked_out + history.max_waiting
    burst = max(random_burst, seen)
    total = max(pool_size, math.ceil(HEADROOM * burst - 1e-9))
    timeout, timeout_reason = _pool_timeout(history, request_timeout)
    per_process = (
        f" per process ({peak.workers} workers share {peak.instance}'s counters)"
        if peak.workers > 1
        else ""
    )
    with_timeouts = (
        f", {_g(peak.timeout_rate)}/s of them timed out" if peak.timeout_rate > 0 else ""
    )
    reasons = [
        f"peak: {_g(peak.arrival_rate)} checkouts/s{per_process}{with_timeouts}, held "
        f"{_g(peak.hold_seconds)} s on average, in the busiest window (of {peak.instance}); "
        f"Little's law: {_g(peak.arrival_rate)}/s x {_g(peak.hold_seconds)} s = {_g(load)} "
        "connections in use on average",
        f"pool_size={pool_size}: {_g(load)} x {HEADROOM:g} headroom, rounded up",
        f"max_overflow={total - pool_size}: bursts reach {_g(burst)} connections ("
        + (
            f"{_g(load)} + {BURST_SIGMAS:g} x sqrt({_g(load)}) for random arrivals"
            if random_burst >= seen
            else f"{_g(history.max_checked_out)} in use + {_g(history.max_waiting)} waiting, "
            "the most seen at once"
        )
        + f"); x {HEADROOM:g} headroom = {total} connections, minus pool_size",
        f"pool_timeout={timeout:g}: {timeout_reason}",
    ]
    return Sizing(history.pool, pool_size, total - pool_size, timeout, load, burst, reasons)


def _pool_timeout(history: PoolHistory, request_timeout: float) -> tuple[float, str]:
    """The timeout and the sentence explaining it."""
    cap = request_timeout / 3
    hold = history.hold_p99
    if hold is None or math.isnan(hold):
        value = min(cap, max(MIN_POOL_TIMEOUT, 10.0))
        return value, f"no hold history to judge by; {value:g} s, at most a third of the " + (
            f"request timeout ({request_timeout:g} s)"
        )
    raw = TIMEOUT_HOLDS * hold
    value = math.ceil(min(cap, max(MIN_POOL_TIMEOUT, raw)) * 10 - 1e-9) / 10
    reason = (
        f"{TIMEOUT_HOLDS:g} x the p99 hold ({_g(hold)} s) = {_g(raw)} s: a waiting checkout "
        "gets a connection within one p99 hold when the pool is healthy, so waiting "
        f"{TIMEOUT_HOLDS:g} times that means it is stuck"
    )
    if raw < MIN_POOL_TIMEOUT:
        reason += f"; raised to {MIN_POOL_TIMEOUT:g} s so a pause does not turn into errors"
    elif raw > cap:
        reason += (
            f"; capped at a third of the request timeout ({request_timeout:g} s) so an "
            "exhausted pool fails before the client gives up (long holds: find them with "
            "sqlalchemy_route_connection_hold_seconds_total)"
        )
    return value, reason


@dataclass(frozen=True)
class ServerRoom:
    """How many connections the server lets the app open, and where that number came from."""

    max_connections: int
    reserved: int
    source: str  # "the database" or "Prometheus (pg_settings_*)"

    @property
    def available(self) -> int:
        """Connections ordinary roles may open."""
        return self.max_connections - self.reserved


def largest_replicas(room: ServerRoom, workers: int, per_process: int) -> int:
    """Replicas of ``workers`` processes, each opening up to ``per_process`` connections, that
    fit in the server's available connections (0 when not even one does)."""
    if per_process <= 0:
        raise ValueError(f"per_process must be > 0 connections (got {per_process})")
    return max(room.available, 0) // (max(workers, 1) * per_process)
