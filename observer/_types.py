"""The shapes of the plain data the observer hands out (``Observer.snapshot()``)."""

from __future__ import annotations

from typing import TypedDict


class PoolSnapshot(TypedDict):
    """One watched pool: its name and its numbers right now (the gauges' values)."""

    name: str
    size: int
    max_connections: int
    checked_out: int
    checked_in: int
    overflow: int
    waiting: int


class SessionSnapshot(TypedDict):
    """One open session (holding a transaction)."""

    age_seconds: float
    route: str
    request_id: str | None
    origin: str | None  # ``file:line in function`` of the app code that opened it
    leak: str | None  # the leak reason once reported, else None


class LeakSnapshot(TypedDict):
    """Leaked sessions counted so far from one place (reason, route, origin)."""

    reason: str
    route: str
    origin: str  # ``"unknown"`` when the origin was not captured
    count: int


class ConnectionSnapshot(TypedDict):
    """One checked-out connection: who holds it, and whether a statement runs on it now."""

    pool: str
    route: str
    request_id: str | None
    held_seconds: float  # since its checkout
    state: str  # "executing" (a statement, COMMIT or ROLLBACK runs) or "idle"
    state_seconds: float  # how long it has been in that state
    session_origins: list[str]  # where the holding request's sessions were opened


class Snapshot(TypedDict):
    """:meth:`observer.Observer.snapshot`: pools, open sessions and checked-out connections."""

    pools: list[PoolSnapshot]
    live_pools: int  # every connection pool of the process, watched or not
    sessions: list[SessionSnapshot]  # oldest first
    leaks: list[LeakSnapshot]  # most frequent first
    connections: list[ConnectionSnapshot]  # longest held first
