"""Live pools: every pool in the process that has been used and not disposed or collected,
including engines nobody passed to the observer (an engine created per request climbs here).

Found through a class-level *pool* event (``connect``: a new DBAPI connection, in any pool),
never an engine-level one: listening to any ``Engine`` connection event sets SQLAlchemy's
execution-event flag, and then every statement of every engine goes through the execution-event
dispatch (measured +13-20 us a statement, bench/README.md).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry, Pool

from observer._compat.sqlalchemy import listen_keeping_execution_flag, pool_dialect, pool_of_record
from observer._hooks import Hooks
from observer.metrics._families import Metrics


class LivePools:
    """Counts pools alive in the process; tells ``on_new_pool`` about each new one."""

    def __init__(self, metrics: Metrics, hooks: Hooks) -> None:
        self._created = metrics.pools_created
        self._hooks = hooks
        # id(pool) -> weak reference whose callback forgets the pool when it is collected
        self._pools: dict[int, weakref.ref[Pool]] = {}
        self.on_new_pool: Callable[[Pool], None] | None = None  # told of each new pool
        self._on_connect_safely = hooks.guard("pool_connect_any", self._on_pool_connect)
        self._on_disposed_safely = hooks.guard("engine_disposed_any", self._on_engine_disposed)

    def attach(self) -> None:
        event.listen(Pool, "connect", self._on_connect_safely)
        listen_keeping_execution_flag(Engine, "engine_disposed", self._on_disposed_safely)

    def detach(self) -> None:
        for target, identifier, fn in (
            (Pool, "connect", self._on_connect_safely),
            (Engine, "engine_disposed", self._on_disposed_safely),
        ):
            if event.contains(target, identifier, fn):
                event.remove(target, identifier, fn)

    def count(self) -> int:
        """Pools alive now."""
        return len(self._pools)

    def _on_pool_connect(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        pool = pool_of_record(record)
        if pool is None:
            return
        key = id(pool)
        if key in self._pools:
            return
        pools = self._pools

        def forget(_: object, key: int = key) -> None:  # runs in a finalizer: lock-free
            pools.pop(key, None)

        pools[key] = weakref.ref(pool, forget)
        self._created.inc()
        if self.on_new_pool is not None:
            self.on_new_pool(pool)

    def _on_engine_disposed(self, engine: Engine) -> None:
        # dispose() replaced the engine's pool: the old one shares the engine's dialect.
        dialect = engine.dialect
        for key, ref in list(self._pools.items()):
            pool = ref()
            if pool is not None and pool is not engine.pool and pool_dialect(pool) is dialect:
                self._pools.pop(key, None)
