"""A pool's numbers at one moment, read from the pool itself where it keeps them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.pool import Pool, QueuePool, StaticPool

from observer._compat.sqlalchemy import max_overflow, static_pool_record


@dataclass(frozen=True, slots=True)
class PoolState:
    """A pool's numbers at one moment (what the gauges and the snapshot show)."""

    size: int
    max_connections: int
    checked_out: int
    checked_in: int
    overflow: int
    waiting: int


def read_state(
    pool: Pool, *, waiting: int, out_of_current: int, out_of_old_pools: int, idle_in_old_pools: int
) -> PoolState:
    """The state of ``pool``, given what only the tracker counts: checkouts waiting, connections
    out of this pool and of pools ``dispose()`` replaced, and connections idle in those."""
    if isinstance(pool, QueuePool):
        size = pool.size()
        overflow = max_overflow(pool) or 0
        return PoolState(
            size=size,
            max_connections=-1 if overflow < 0 else size + overflow,
            checked_out=pool.checkedout() + out_of_old_pools,
            checked_in=pool.checkedin() + idle_in_old_pools,
            overflow=max(0, pool.overflow()),  # QueuePool counts from -pool_size
            waiting=waiting,
        )
    checked_out = out_of_current + out_of_old_pools
    if isinstance(pool, StaticPool):
        record = static_pool_record(pool)
        connected = record is not None and record.dbapi_connection is not None
        return PoolState(
            size=1,
            max_connections=-1,  # one shared connection; checkouts never wait
            checked_out=checked_out,
            checked_in=1 if connected and checked_out == 0 else 0,
            overflow=0,
            waiting=waiting,
        )
    # NullPool and friends: no pooling, so no size and no limit; in use is what we counted.
    return PoolState(
        size=0,
        max_connections=-1,
        checked_out=checked_out,
        checked_in=0,
        overflow=0,
        waiting=waiting,
    )


def pool_fields(state: PoolState) -> dict[str, int]:
    """A pool's state the way HikariCP logs it: total, active, idle, waiting (and the limits)."""
    return {
        "total": state.checked_out + state.checked_in,
        "active": state.checked_out,
        "idle": state.checked_in,
        "waiting": state.waiting,
        "size": state.size,
        "max_connections": state.max_connections,
    }
