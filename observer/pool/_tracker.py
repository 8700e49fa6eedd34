"""The pool tracker: watches one engine, wiring its pool's events and acquire/return seams."""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry, Pool, QueuePool

from observer._compat.sqlalchemy import (
    GC_FINALIZER_FOUND,
    can_wrap_return,
    features_off,
    listen_keeping_execution_flag,
    unwrap,
    wrap_acquire,
    wrap_return,
)
from observer._hooks import Hooks
from observer._logs import RateLimiter, emit
from observer.attribution._route_metrics import RouteMetrics
from observer.attribution._scope import NO_ROUTE
from observer.metrics._batching import LOCK, MOVE, Sink, ThreadSums, Unflushed, can_batch
from observer.metrics._families import HOLD_BUCKETS, WAIT_BUCKETS, Metrics
from observer.pool._acquire import acquire_wrapper, return_wrapper
from observer.pool._base import (
    _CHECKOUTS,
    _HOLD,
    _NONE_CHECKOUTS,
    _NONE_HOLD,
    _NONE_WAIT,
    _SIZE,
    _WAIT,
    PoolOtel,
    Reclaimed,
    Stamp,
)
from observer.pool._events import PoolEvents
from observer.pool._idle import IdleWatch
from observer.pool._state import PoolState, read_state

__all__ = ["PoolState", "PoolTracker", "pool_states"]

_pool_keys = itertools.count(1)
_features_told: list[bool] = []  # once per process: the first engine watched


def tell_features_off() -> None:
    """Log ``observer.feature_off`` once per process for each feature the installed SQLAlchemy
    turns off (none on a supported release), naming the feature, the release and why."""
    if _features_told:
        return
    _features_told.append(True)
    release = f"SQLAlchemy {sqlalchemy.__version__}"
    for feature, why in features_off():
        emit("warning", "observer.feature_off", None, feature=feature, release=release, why=why)


class PoolTracker(PoolEvents):
    """Watches one engine: listeners on its pool, a wrapper around the pool's ``connect``."""

    _idle: IdleWatch  # the parts in other modules know it as an IdleSink (observer/pool/_base.py)

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
        slow_checkout: float | None = None,
        idle_gap_log: float | None = None,
        capture: Callable[[], object] | None = None,
    ) -> None:
        self.engine_ref = weakref.ref(engine)  # weakly: dropping the engine frees it (and us)
        self.name = name
        self._metrics = metrics
        self._m = metrics.bind_pool(name)
        self._hooks = hooks
        self._routes = routes
        self._application_name = application_name
        self._limiter = limiter
        self._slow_checkout = float("inf") if slow_checkout is None else slow_checkout
        self._lock = threading.Lock()
        # One item per waiting checkout: list.append/pop are atomic, so acquiring takes no lock.
        self._waiters: list[None] = []
        self._sums = ThreadSums(_SIZE)
        self._slot = self._sums.slot
        self._by_thread = self._sums.by_thread
        # Batched only in a single process, where every read of the registry adds the sums not
        # moved yet (metrics/_collectors.py); in multiprocess mode another process reads the
        # files at any time (and a worker can die between two flushes), so every event goes to
        # prometheus-client at once.
        m = self._m
        self._batched = (
            not metrics.multiprocess
            and can_batch(m.checkout_duration, WAIT_BUCKETS)
            and can_batch(m.hold, HOLD_BUCKETS)
        )
        # The stamps of the connections checked out now, by id(record.__dict__): who holds what
        # (sqlalchemy_route_connections_held), and our own count of connections out per pool:
        # the state of pools that keep none (NullPool, StaticPool) and of pools swapped out by
        # dispose(), whose counters QueuePool.dispose() resets although their checked-out
        # connections are still in use. Plain dict operations only, atomic under the GIL,
        # because the garbage-collection path removes entries from inside a finalizer.
        self.held: dict[int, Stamp] = {}
        self.otel: PoolOtel | None = None  # OpenTelemetry (observer/_otel.py), when configured
        self.exemplars = False  # trace ids on the histograms (OpenMetrics), with tracing on
        self.span_events = False  # pool wait and hold as events of the current span
        # The pool whose connect() is wrapped now, weakly: SQLAlchemy's pool holds its engine
        # (create_engine's first_connect listener), so a strong one would keep the engine.
        self._pool: weakref.ref[Pool] | None = None
        self._old_pools: weakref.WeakSet[Pool] = weakref.WeakSet()  # swapped out by dispose()
        # A key per pool, never reused (an id() is: a new pool can take a collected one's
        # address before the work deferred out of its finalizer has run).
        self._keys: weakref.WeakKeyDictionary[Pool, int] = weakref.WeakKeyDictionary()
        # key of a replaced pool -> connections returned to it and still open there: when the
        # old pool is garbage-collected they go without a close event, so we count them then.
        self._idle_in_old: dict[int, int] = {}
        # keys of the pools that never hand one connection to two holders (QueuePool and its
        # async subclass): a checkout there that finds another's stamp is a double handout
        self._queue_pools: set[int] = set()
        # async connection records the garbage collector's finalizer is returning (_handout.py)
        self._reclaiming: weakref.WeakKeyDictionary[ConnectionPoolEntry, Reclaimed] = (
            weakref.WeakKeyDictionary()
        )
        self._finalizers: list[weakref.finalize[Any, Any]] = []
        self._listeners: list[tuple[str, Callable[..., Any]]] = []  # on the engine
        self._checkout_failed = hooks.reporter("checkout")
        self._checkin_failed = hooks.reporter("checkin")
        # A sync connection the garbage collector reclaims is returned through reset and checkin
        # (reset tells it apart); an async one is detached from inside SQLAlchemy's garbage
        # collection finalizer instead, which _on_detach recognises on the stack.
        self._listens_to_reset = not engine.dialect.is_async or not GC_FINALIZER_FOUND
        # Returns are seen by wrapping the pool's return step (observer/_compat/sqlalchemy.py,
        # can_wrap_return); a pool without it gets the checkin listener instead.
        self._wraps_return = can_wrap_return(engine.pool)
        self._idle = IdleWatch(name, metrics, routes, hooks, limiter, idle_gap_log, capture)
        self._record_timeout_safely = hooks.guard("checkout_timeout", self._record_timeout)
        self._loop_error_safely = hooks.guard("loop_mismatch", self._loop_mismatch)

    @property
    def engine(self) -> Engine:
        """The watched engine (ReferenceError once it was garbage-collected)."""
        engine = self.engine_ref()
        if engine is None:
            raise ReferenceError(f"the engine of pool {self.name!r} was garbage-collected")
        return engine

    @property
    def pool(self) -> Pool | None:
        """The engine's current pool, the one whose acquire step is wrapped (None once
        detached)."""
        return self._pool() if self._pool is not None else None

    # -- wiring ---------------------------------------------------------------------------

    def attach(self, on_engine_gone: Callable[[PoolTracker], object] | None = None) -> None:
        """Add every listener and wrap the pool's acquire step; ``on_engine_gone(self)`` runs
        (deferred to the next drain) once the engine is garbage-collected, unless detached."""
        tell_features_off()
        g = self._hooks.guard
        listeners: list[tuple[str, Callable[..., Any]]] = [
            ("do_connect", g("do_connect", self._on_do_connect)),
            ("connect", g("connect", self._on_connect)),
            ("invalidate", g("invalidate", self._on_invalidate)),
            ("soft_invalidate", g("soft_invalidate", self._on_soft_invalidate)),
            ("close", g("close", self._on_close)),
            ("detach", g("detach", self._on_detach)),
            ("engine_disposed", g("engine_disposed", self._on_engine_disposed)),
            ("handle_error", g("handle_error", self._on_handle_error)),
        ]
        if self._listens_to_reset:
            listeners.append(("reset", g("reset", self._on_reset)))
        if not self._wraps_return:
            listeners.append(("checkin", self._on_checkin))  # catches its own errors
        self._listeners.extend(listeners)
        engine = self.engine
        if on_engine_gone is not None:  # runs inside the garbage collector: deferred
            self._finalizers.append(
                weakref.finalize(engine, self._hooks.pending.append, (on_engine_gone, self))
            )
        # Any engine-level listener would send every statement of the engine through the
        # execution-event dispatch (+13-20 us a statement, bench/README.md), so the flag that
        # says so is put back as it was: engine_disposed is dispatched regardless, and
        # handle_error then fires only when something else (OpenTelemetry's instrumentation,
        # the app) listens to execution events; a different-loop error is also caught at
        # checkout and when SQLAlchemy invalidates the connection.
        for identifier, fn in self._listeners:
            listen_keeping_execution_flag(engine, identifier, fn)
        self._idle.attach(engine.dialect)
        self._wrap(engine.pool)

    @property
    def waiting(self) -> int:
        """Checkouts waiting for a connection now."""
        return len(self._waiters)

    def flush(self) -> None:
        """Move what the hot path summed per thread since the last flush into the metrics."""
        with LOCK:
            self._put(self._sums.take(), MOVE)
            self._idle.flush(MOVE)

    def unflushed(self, view: Unflushed) -> None:
        """Add to a scrape's ``view`` what :meth:`flush` would move now (the caller holds LOCK)."""
        self._put(self._sums.pending(), view)
        self._idle.unflushed(view)

    def _put(self, delta: list[float], sink: Sink) -> None:
        metrics, m, pool = self._metrics, self._m, (self.name,)
        sink.count(metrics.checkouts, pool, m.checkouts, delta[_CHECKOUTS])
        sink.histogram(metrics.checkout_duration, pool, m.checkout_duration, _WAIT, delta)
        sink.histogram(metrics.hold, pool, m.hold, _HOLD, delta)
        none, outside = (NO_ROUTE,), self._routes.children(NO_ROUTE)  # work outside requests
        sink.count(metrics.route_checkouts, none, outside.checkouts, delta[_NONE_CHECKOUTS])
        sink.count(metrics.route_wait, none, outside.wait, delta[_NONE_WAIT])
        sink.count(metrics.route_hold, none, outside.hold, delta[_NONE_HOLD])

    def detach(self) -> None:
        """Remove every listener and wrapper this tracker added."""
        self.flush()
        engine = self.engine_ref()  # None: collected, and its listeners with it
        for identifier, fn in reversed(self._listeners if engine is not None else []):
            if event.contains(engine, identifier, fn):
                event.remove(engine, identifier, fn)
        self._listeners.clear()
        for pool in [self.pool, *self._old_pools]:
            if pool is not None:
                unwrap(pool, self)
        self._pool = None
        self._idle.detach()
        for finalizer in self._finalizers:
            finalizer.detach()
        self._finalizers.clear()
        self._idle_in_old.clear()
        self._metrics.unbind_pool(self.name)

    def _wrap(self, pool: Pool) -> None:
        """Wrap the pool's acquire step (and its return step, when it has one)."""
        key = self._key(pool)
        self._idle.pool_keys.add(key)
        if isinstance(pool, QueuePool):
            self._queue_pools.add(key)
        wrap_acquire(
            pool,
            self,
            lambda original: acquire_wrapper(
                original,
                self._waiters,
                self._record_checkout,
                self._checkout_failed,
                self._record_timeout_safely,
                self._loop_error_safely,
                key,
            ),
        )
        if self._wraps_return:
            wrap_return(pool, self, lambda original: return_wrapper(original, self._on_checkin))
        self._pool = weakref.ref(pool)

    def _key(self, pool: Pool) -> int:
        key = self._keys.get(pool)
        if key is None:
            key = self._keys[pool] = next(_pool_keys)
        return key

    def _on_engine_disposed(self, engine: Engine) -> None:
        # dispose() swapped in a new pool; listeners moved with it (Pool.recreate copies the
        # dispatch), the wrapper did not. Connections still out of the old pool still count.
        old = self.pool
        if engine.pool is old:
            return
        if old is not None:
            self._old_pools.add(old)
            key = self._key(old)
            self._idle_in_old[key] = 0
            # runs when the garbage collector frees the old pool: lock-free, deferred
            self._finalizers = [f for f in self._finalizers if f.alive]
            self._finalizers.append(
                weakref.finalize(
                    old,
                    self._hooks.pending.append,
                    (self._old_pool_collected, key),
                )
            )
        self._wrap(engine.pool)

    # -- state ------------------------------------------------------------------------------

    def state(self) -> PoolState:
        """The pool's numbers now, read from the pool itself where it keeps them."""
        engine = self.engine_ref()
        pool = engine.pool if engine is not None else self.pool
        if pool is None:
            raise ReferenceError(f"pool {self.name!r} is no longer watched")
        waiting = self.waiting
        current = self._key(pool)
        stamps = list(self.held.values())  # one C call: no other thread runs meanwhile
        out_of_current = sum(1 for stamp in stamps if stamp[2] == current)
        # A connection returned to a pool that dispose() replaced stays open, idle in that old
        # pool, until the old pool is garbage-collected (dispose() closes only the connections
        # idle at the time): the server still counts it, so do we.
        idle_in_old_pools = sum(
            old.checkedin() for old in list(self._old_pools) if isinstance(old, QueuePool)
        )
        return read_state(
            pool,
            waiting=waiting,
            out_of_current=out_of_current,
            out_of_old_pools=len(stamps) - out_of_current,
            idle_in_old_pools=idle_in_old_pools,
        )


def pool_states(
    trackers: dict[int, PoolTracker], failed: Callable[[Exception], None]
) -> list[tuple[PoolTracker, PoolState]]:
    """Each tracker's pool state now. A tracker whose engine was garbage-collected is left out
    (the Observer forgets it at its next drain); one whose state cannot be read is left out and
    its error goes to ``failed``. Lock-free: scrapes and OpenTelemetry callbacks call this."""
    states = []
    for tracker in list(trackers.values()):
        engine = tracker.engine_ref()  # held while its pool's state is read
        if engine is None:
            continue
        try:
            states.append((tracker, tracker.state()))
        except Exception as exc:
            failed(exc)
    return states
