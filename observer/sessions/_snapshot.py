"""``Observer.snapshot()`` as plain data, read part by part so a part that fails is left out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from time import perf_counter
from typing import TYPE_CHECKING, TypeVar, cast

from observer._types import (
    ConnectionSnapshot,
    LeakSnapshot,
    PoolSnapshot,
    SessionSnapshot,
    Snapshot,
)
from observer.sessions._tracker import SessionTracker

if TYPE_CHECKING:  # the pool layer is a sibling of this one: its state type is only named here
    from observer.pool._state import PoolState

T = TypeVar("T")


def read_snapshot(
    pools: Callable[[], Sequence[tuple[str, PoolState]]],
    live_pools: Callable[[], int],
    sessions: SessionTracker,
    failed: Callable[[Exception], None],
    connections: Callable[[], list[ConnectionSnapshot]] = list,
    clock: Callable[[], float] = perf_counter,
) -> Snapshot:
    """Pools (``pools()`` leaves out a pool it cannot read), live pools, open sessions (oldest
    first), leaks (most frequent first) and checked-out connections (``connections()``). A part
    that raises is empty (0 live pools) and its exception goes to ``failed``: this never
    raises."""
    now = clock()
    return Snapshot(
        pools=_read(lambda: [_pool(name, state) for name, state in pools()], [], failed),
        live_pools=_read(live_pools, 0, failed),
        sessions=_read(lambda: _open_sessions(sessions, now), [], failed),
        leaks=_read(lambda: _leaks(sessions), [], failed),
        connections=_read(connections, [], failed),
    )


def _read(read: Callable[[], T], default: T, failed: Callable[[Exception], None]) -> T:
    try:
        return read()
    except Exception as exc:
        failed(exc)
        return default


def _pool(name: str, state: PoolState) -> PoolSnapshot:
    """``name`` and every field of ``state`` (tests/core pins that the keys are the same)."""
    return cast(PoolSnapshot, {"name": name, **asdict(state)})


def _open_sessions(sessions: SessionTracker, now: float) -> list[SessionSnapshot]:
    return [
        SessionSnapshot(
            age_seconds=round(now - record.started, 3),
            route=record.route,
            request_id=record.scope.request_id if record.scope else None,
            origin=str(record.origin) if record.origin else None,
            leak=record.reported,
        )
        for record in sorted(sessions.open.values(), key=lambda r: r.started)
    ]


def _leaks(sessions: SessionTracker) -> list[LeakSnapshot]:
    return [
        LeakSnapshot(reason=reason, route=route, origin=origin, count=count)
        for (reason, route, origin), count in sorted(
            sessions.leak_origins.items(), key=lambda item: -item[1]
        )
    ]
