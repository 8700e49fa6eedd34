"""Live pools: every pool in the process that has been used and not disposed or collected,
including engines nobody passed to the observer (an engine created per request climbs here)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from observer.guard import Hooks
from observer.metrics import Metrics


class LivePools:
    """Finds pools through class-level engine events: ``engine_connect`` sees every pool when it
    is first used, ``engine_disposed`` tells when an engine dropped its pool."""

    def __init__(self, metrics: Metrics, hooks: Hooks) -> None:
        self._created = metrics.pools_created
        self._hooks = hooks
        # id(pool) -> weak reference whose callback forgets the pool when it is collected
        self._pools: dict[int, weakref.ref[Any]] = {}
        self._engine_pool: dict[int, int] = {}  # id(engine) -> id(its pool when last used)
        self.on_new_pool: Callable[[Engine], None] | None = None  # told of each new pool
        self._listeners = (
            ("engine_connect", hooks.guard("engine_connect", self._on_engine_connect)),
            ("engine_disposed", hooks.guard("engine_disposed_any", self._on_engine_disposed)),
        )

    def attach(self) -> None:
        for identifier, fn in self._listeners:
            event.listen(Engine, identifier, fn)

    def detach(self) -> None:
        for identifier, fn in self._listeners:
            if event.contains(Engine, identifier, fn):
                event.remove(Engine, identifier, fn)

    def count(self) -> int:
        """Pools alive now."""
        return len(self._pools)

    def _on_engine_connect(self, connection: Connection) -> None:
        engine = connection.engine
        pool = engine.pool
        key = id(pool)
        if key in self._pools:
            return
        pools = self._pools

        def forget(_: object, key: int = key) -> None:  # runs in a finalizer: lock-free
            pools.pop(key, None)

        pools[key] = weakref.ref(pool, forget)
        self._engine_pool[id(engine)] = key
        self._created.inc()
        if self.on_new_pool is not None:
            self.on_new_pool(engine)

    def _on_engine_disposed(self, engine: Engine) -> None:
        old = self._engine_pool.pop(id(engine), None)
        if old is not None and old != id(engine.pool):
            self._pools.pop(old, None)
