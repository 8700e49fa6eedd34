"""The pool tracker: one watched engine's pool events, its acquire seam and its state.

State of a checkout lives on the connection record (``record.info``), never in a map keyed by
``id(dbapi_connection)``: the record is what SQLAlchemy hands every event, also after an
invalidation has set the DBAPI connection to ``None``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection, QueuePool, StaticPool

from observer.context import RequestScope, current_request
from observer.guard import Hooks
from observer.logs import RateLimiter, logger
from observer.metrics import Metrics
from observer.routes import RouteMetrics

CHECKOUT = "pool_observer.checkout"  # (checkout time, request scope, pool id) while checked out
GC = "pool_observer.gc"  # set by reset when the garbage collector reclaims the connection
CLOSE_REASON = "pool_observer.close_reason"  # set by (soft_)invalidate, read by close
CONNECT_STARTED = "pool_observer.connect_started"  # set by do_connect, read by connect


Stamp = tuple[float, RequestScope | None, int]  # checkout time, request, id() of the pool


@dataclass(frozen=True, slots=True)
class PoolState:
    """A pool's numbers at one moment (what the gauges and the snapshot show)."""

    size: int
    max_connections: int
    checked_out: int
    checked_in: int
    overflow: int
    waiting: int


class PoolTracker:
    """Watches one engine: listeners on its pool, a wrapper around the pool's ``connect``."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        *,
        metrics: Metrics,
        hooks: Hooks,
        routes: RouteMetrics,
        application_name: str | None,
        limiter: RateLimiter,
    ) -> None:
        self.engine = engine
        self.name = name
        self._metrics = metrics
        self._m = metrics.bind_pool(name)
        self._hooks = hooks
        self._routes = routes
        self._application_name = application_name
        self._limiter = limiter
        self._lock = threading.Lock()  # only off the hot path (state, forgetting old pools)
        # Callers inside pool.connect() now: one item each. list.append/list.pop are atomic,
        # so the hot path takes no lock (two lock round trips per checkout before).
        self._waiters: list[None] = []
        # Our own count of connections out, per pool (by id), one item per connection (append
        # at checkout, pop at checkin: atomic, lock-free): the state of pools that keep none
        # (NullPool, StaticPool), and of pools swapped out by dispose(), whose counters
        # QueuePool.dispose() resets although their checked-out connections are still in use.
        self._out: dict[int, list[None]] = {}
        self._pool: Pool | None = None  # the pool whose connect() is wrapped now
        self._old_pools: weakref.WeakSet[Pool] = weakref.WeakSet()  # swapped out by dispose()
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        self._record_checkout_safely = hooks.guard("checkout", self._record_checkout)
        self._record_timeout_safely = hooks.guard("checkout_timeout", self._record_timeout)

    # -- wiring ---------------------------------------------------------------------------

    def attach(self) -> None:
        """Add every listener and wrap the pool's acquire step."""
        g = self._hooks.guard
        # Listening to any engine event sets engine._has_events, which sends every statement
        # on this engine through the execution-event dispatch (measured: +13-20 µs per
        # statement). engine_disposed is dispatched whether or not that flag is set, so the
        # flag is put back as it was (a library that listens to execution events sets it again).
        own_flag = self.engine.__dict__.get("_has_events")
        for target, identifier, fn in (
            (self.engine, "do_connect", g("do_connect", self._on_do_connect)),
            (self.engine, "connect", g("connect", self._on_connect)),
            (self.engine, "checkin", g("checkin", self._on_checkin)),
            (self.engine, "reset", g("reset", self._on_reset)),
            (self.engine, "invalidate", g("invalidate", self._on_invalidate)),
            (self.engine, "soft_invalidate", g("soft_invalidate", self._on_soft_invalidate)),
            (self.engine, "close", g("close", self._on_close)),
            (self.engine, "detach", g("detach", self._on_detach)),
            (self.engine, "engine_disposed", g("engine_disposed", self._on_engine_disposed)),
        ):
            event.listen(target, identifier, fn)
            self._listeners.append((target, identifier, fn))
        if own_flag is None:
            self.engine.__dict__.pop("_has_events", None)  # back to the class's value
        else:
            self.engine._has_events = own_flag
        self._wrap(self.engine.pool)

    def detach(self) -> None:
        """Remove every listener and wrapper this tracker added."""
        for target, identifier, fn in reversed(self._listeners):
            if event.contains(target, identifier, fn):
                event.remove(target, identifier, fn)
        self._listeners.clear()
        for pool in [self._pool, *self._old_pools]:
            if pool is not None:
                self._unwrap(pool)
        self._pool = None
        self._metrics.unbind_pool(self.name)

    def _wrap(self, pool: Pool) -> None:
        """Wrap ``pool.connect``: SQLAlchemy has no "checkout started" event, and a checkout
        that times out fires no event at all, so waiting time, waiters and timeouts are
        measured around the call that ``Engine.raw_connection`` makes."""
        original = pool.connect
        waiters = self._waiters
        record_checkout = self._record_checkout_safely
        record_timeout = self._record_timeout_safely
        pool_id = id(pool)
        with self._lock:
            self._out.setdefault(pool_id, [])

        def connect() -> PoolProxiedConnection:
            waiters.append(None)
            started = perf_counter()
            try:
                connection = original()
            except sa_exc.TimeoutError:
                waited = perf_counter() - started
                waiters.pop()
                record_timeout(waited)
                raise
            except BaseException:
                waiters.pop()
                raise
            now = perf_counter()
            waiters.pop()
            record_checkout(connection, now, now - started, pool_id)
            return connection

        connect.__pool_observer__ = (self, original)  # type: ignore[attr-defined]
        pool.connect = connect  # type: ignore[method-assign]
        self._pool = pool

    def _unwrap(self, pool: Pool) -> None:
        wrapper = pool.__dict__.get("connect")
        marker = getattr(wrapper, "__pool_observer__", None)
        if marker is None or marker[0] is not self:
            return
        original = marker[1]
        if getattr(original, "__self__", None) is pool:
            del pool.connect  # back to the class's method
        else:
            pool.connect = original  # type: ignore[method-assign]

    @property
    def waiting(self) -> int:
        """Callers waiting in the pool's ``connect`` now."""
        return len(self._waiters)

    # -- the acquire seam -----------------------------------------------------------------

    def _record_checkout(
        self, connection: PoolProxiedConnection, now: float, waited: float, pool_id: int
    ) -> None:
        m = self._m
        m.checkouts.inc()
        m.checkout_duration.observe(waited)
        scope = current_request.get()
        info = connection.info
        if info.get(CHECKOUT) is None:  # StaticPool hands the same record out again
            out = self._out.get(pool_id)
            if out is None:  # a pool forgotten by _returned, in use again
                with self._lock:
                    out = self._out.setdefault(pool_id, [])
            out.append(None)
        info[CHECKOUT] = (now, scope, pool_id)
        if scope is None:
            self._routes.outside_request(checkouts=1, wait=waited)
        else:
            scope.checkouts += 1
            scope.wait_seconds += waited

    def _record_timeout(self, waited: float) -> None:
        m = self._m
        m.timeouts.inc()
        m.checkout_duration.observe(waited)
        scope = current_request.get()
        if scope is None:
            self._routes.outside_request(checkouts=0, wait=waited)
        else:
            scope.wait_seconds += waited
        if self._limiter.allow("pool.checkout_timeout"):
            state = self.state()
            logger.warning(
                "pool.checkout_timeout",
                pool=self.name,
                waited_seconds=round(waited, 6),
                route=scope.route if scope else None,
                request_id=scope.request_id if scope else None,
                size=state.size,
                max_connections=state.max_connections,
                checked_out=state.checked_out,
                idle=state.checked_in,
                waiting=state.waiting,
            )

    # -- pool events ----------------------------------------------------------------------

    def _on_do_connect(
        self, dialect: Any, record: ConnectionPoolEntry | None, cargs: Any, cparams: Any
    ) -> None:
        if record is not None:
            record.info[CONNECT_STARTED] = perf_counter()
        name = self._application_name
        if name and dialect.name == "postgresql":
            if dialect.driver == "asyncpg":
                settings = dict(cparams.get("server_settings") or {})
                if "application_name" not in settings:
                    settings["application_name"] = name
                    cparams["server_settings"] = settings
            elif "application_name" not in cparams:
                cparams["application_name"] = name

    def _on_connect(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        m = self._m
        m.opened.inc()
        started = record.info.pop(CONNECT_STARTED, None)
        if started is not None:
            m.connect_duration.observe(perf_counter() - started)

    def _on_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        info = record.info
        if info.pop(GC, False):
            return  # a sync connection reclaimed by the garbage collector: see _on_reset
        stamp = info.pop(CHECKOUT, None)
        if stamp is None:
            return  # checked out before the observer was attached
        self._returned(stamp, perf_counter())

    def _returned(self, stamp: Stamp, now: float) -> None:
        started, scope, pool_id = stamp
        out = self._out.get(pool_id)
        if out:
            try:  # noqa: SIM105 (contextlib.suppress costs more on this hot path)
                out.pop()
            except IndexError:  # a concurrent checkin took the last one
                pass
        if not out and pool_id != id(self._pool):  # nothing left out of an old pool: forget it
            with self._lock:
                if not self._out.get(pool_id, True):
                    del self._out[pool_id]
        held = now - started
        self._m.hold.observe(held)
        if scope is None:
            self._routes.outside_request(hold=held)
        else:
            self._routes.held(scope, held)

    def _on_reset(
        self, dbapi_connection: Any, record: ConnectionPoolEntry | None, state: Any
    ) -> None:
        if record is None:
            return  # a detached connection being closed
        if state.asyncio_safe and not getattr(record, "needs_gc", False):
            return  # the ordinary return of a connection
        # The garbage collector is reclaiming a connection nobody returned: this runs inside a
        # finalizer (pool/base.py _finalize_fairy), so only lock-free work here.
        info = record.info
        stamp = info.pop(CHECKOUT, None)
        info[GC] = True
        self._hooks.pending.append((self._reclaimed, stamp, perf_counter()))

    def _reclaimed(self, stamp: Stamp | None, now: float) -> None:
        self._m.reclaimed.inc()
        if stamp is None:
            return
        self._returned(stamp, now)
        started, scope, _ = stamp
        if self._limiter.allow("pool.connection_reclaimed"):
            logger.warning(
                "pool.connection_reclaimed",
                pool=self.name,
                held_seconds=round(now - started, 3),
                route=scope.route if scope else None,
                request_id=scope.request_id if scope else None,
                hint="a connection or session was never closed; use 'async with' or close it "
                "in a finally block",
            )

    def _on_invalidate(self, dbapi_connection: Any, record: ConnectionPoolEntry, exc: Any) -> None:
        record.info[CLOSE_REASON] = "invalidated"
        self._hooks.pending.append((self._log_invalidated, type(exc).__name__ if exc else None))

    def _log_invalidated(self, error: str | None) -> None:
        if self._limiter.allow("pool.connection_invalidated"):
            logger.info("pool.connection_invalidated", pool=self.name, error=error)

    def _on_soft_invalidate(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, exc: Any
    ) -> None:
        record.info[CLOSE_REASON] = "soft_invalidated"

    def _on_close(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Can run in a finalizer (an overflow connection discarded on a GC'd checkin): defer.
        reason = record.info.pop(CLOSE_REASON, "closed")
        self._hooks.pending.append((self._m.closed[reason].inc,))

    def _on_detach(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        info = record.info
        if info.pop(GC, False):
            reason = "garbage_collected"
        else:
            reason = "detached"
            stamp = info.pop(CHECKOUT, None)
            if stamp is not None:  # the app detached a checked-out connection from the pool
                self._hooks.pending.append((self._returned, stamp, perf_counter()))
        self._hooks.pending.append((self._m.closed[reason].inc,))

    def _on_engine_disposed(self, engine: Engine) -> None:
        # dispose() swapped in a new pool; listeners moved with it (Pool.recreate copies the
        # dispatch), the wrapper did not. Connections still out of the old pool still count.
        if engine.pool is self._pool:
            return
        if self._pool is not None:
            self._old_pools.add(self._pool)
        self._wrap(engine.pool)

    # -- state ------------------------------------------------------------------------------

    def state(self) -> PoolState:
        """The pool's numbers now, read from the pool itself where it keeps them."""
        pool = self.engine.pool
        waiting = self.waiting
        current = id(pool)
        with self._lock:
            counts = [(key, len(out)) for key, out in list(self._out.items())]
        out_of_old_pools = sum(n for key, n in counts if key != current)
        out_of_current = sum(n for key, n in counts if key == current)
        if isinstance(pool, QueuePool):
            size = pool.size()
            max_overflow = getattr(pool, "_max_overflow", 0)
            return PoolState(
                size=size,
                max_connections=-1 if max_overflow < 0 else size + max_overflow,
                checked_out=pool.checkedout() + out_of_old_pools,
                checked_in=pool.checkedin(),
                overflow=max(0, pool.overflow()),  # QueuePool counts from -pool_size
                waiting=waiting,
            )
        checked_out = out_of_current + out_of_old_pools
        if isinstance(pool, StaticPool):
            record = pool.__dict__.get("connection")
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
