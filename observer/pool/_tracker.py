"""The pool tracker: one watched engine's pool events, its acquire seam and its state.

State of a checkout lives on the connection record (``record.info``), never in a map keyed by
``id(dbapi_connection)``: the record is what SQLAlchemy hands every event, also after an
invalidation has set the DBAPI connection to ``None``.
"""

from __future__ import annotations

import itertools
import sys
import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection, QueuePool, StaticPool
from sqlalchemy.pool import base as pool_base

from observer._hooks import Hooks
from observer._logs import RateLimiter, current_span_context, emit, remember_span
from observer.attribution._route_metrics import RouteMetrics
from observer.attribution._scope import NO_ROUTE, RequestScope, request_now
from observer.metrics._batching import (
    LOCK,
    MOVE,
    HistogramSlots,
    Sink,
    ThreadSums,
    Unflushed,
    can_batch,
)
from observer.metrics._families import HOLD_BUCKETS, WAIT_BUCKETS, Metrics

CHECKOUT = "pool_observer.checkout"  # (checkout time, request scope, pool id) while checked out
GC = "pool_observer.gc"  # set by reset when the garbage collector reclaims a sync connection
CLOSE_REASON = "pool_observer.close_reason"  # set by (soft_)invalidate, read by close
CONNECT_STARTED = "pool_observer.connect_started"  # set by do_connect, read by connect
IDLE_IN_OLD = "pool_observer.idle_in_old_pool"  # key of the replaced pool it went back to


Stamp = tuple[float, RequestScope | None, int]  # checkout time, request, key of the pool

_pool_keys = itertools.count(1)

# What the hot path adds to a per-thread list (observer/metrics/_batching.py) instead of calling
# prometheus-client for every event; moved into the metrics on flush, added to them by a scrape.
_CHECKOUTS = 0
_NONE_CHECKOUTS, _NONE_WAIT, _NONE_HOLD = 1, 2, 3  # work outside requests: route="none"
_WAIT = HistogramSlots(4, WAIT_BUCKETS)
_HOLD = HistogramSlots(_WAIT.end, HOLD_BUCKETS)
_WAIT_START, _WAIT_BOUNDS, _WAIT_SUM = _WAIT.start, _WAIT.bounds, _WAIT.sum
_HOLD_START, _HOLD_BOUNDS, _HOLD_SUM = _HOLD.start, _HOLD.bounds, _HOLD.sum
_SIZE = _HOLD.end

# SQLAlchemy detaches a checked-out connection from inside _finalize_fairy only when the garbage
# collector reclaims it from an async dialect (2.0.38 to 2.1). Seeing that function on the stack
# of a detach replaces a reset listener, which would cost every checkin about 1 us to catch a rare
# event. If a release hides the function, the reset listener is used instead.
_FINALIZE_FAIRY = getattr(getattr(pool_base, "_finalize_fairy", None), "__code__", None)


def _in_gc_cleanup() -> bool:
    """Whether the caller runs inside SQLAlchemy's ``_finalize_fairy``."""
    frame = sys._getframe(1)
    for _ in range(16):
        if frame.f_code is _FINALIZE_FAIRY:
            return True
        back = frame.f_back
        if back is None:
            return False
        frame = back
    return False


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
        slow_checkout: float | None = None,
    ) -> None:
        self.engine = engine
        self.name = name
        self._metrics = metrics
        self._m = metrics.bind_pool(name)
        self._hooks = hooks
        self._routes = routes
        self._application_name = application_name
        self._limiter = limiter
        self._slow_checkout = float("inf") if slow_checkout is None else slow_checkout
        self._lock = threading.Lock()
        # One item per checkout waiting for a connection: list.append and list.pop are atomic,
        # so the acquire path takes no lock.
        self._waiters: list[None] = []
        self._sums = ThreadSums(_SIZE)
        self._slot = self._sums.slot
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
        # The stamps of the connections checked out now, by id(record.info): who holds what
        # (sqlalchemy_route_connections_held), and our own count of connections out per pool:
        # the state of pools that keep none (NullPool, StaticPool) and of pools swapped out by
        # dispose(), whose counters QueuePool.dispose() resets although their checked-out
        # connections are still in use. Plain dict operations only, atomic under the GIL,
        # because the garbage-collection path removes entries from inside a finalizer.
        self.held: dict[int, Stamp] = {}
        # OpenTelemetry (observer/_otel.py): None unless configured, so it costs one test.
        self.otel: Any = None
        self.exemplars = False  # trace ids on the histograms (OpenMetrics), with tracing on
        self.span_events = False  # pool wait and hold as events of the current span
        self._pool: Pool | None = None  # the pool whose connect() is wrapped now
        self._old_pools: weakref.WeakSet[Pool] = weakref.WeakSet()  # swapped out by dispose()
        # A key per pool, never reused (an id() is: a new pool can take a collected one's
        # address before the work deferred out of its finalizer has run).
        self._keys: weakref.WeakKeyDictionary[Pool, int] = weakref.WeakKeyDictionary()
        # key of a replaced pool -> connections returned to it and still open there: when the
        # old pool is garbage-collected they go without a close event, so we count them then.
        self._idle_in_old: dict[int, int] = {}
        self._finalizers: list[weakref.finalize[Any, Any]] = []
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        self._checkout_failed = hooks.reporter("checkout")
        self._checkin_failed = hooks.reporter("checkin")
        # A sync connection the garbage collector reclaims is returned through reset and checkin
        # (reset tells it apart); an async one is detached instead (see _in_gc_cleanup).
        self._listens_to_reset = not engine.dialect.is_async or _FINALIZE_FAIRY is None
        # Returns are seen by wrapping the pool's _return_conn, which every checkin calls right
        # after dispatching the checkin event (0.3-0.8 us a cycle less than a checkin listener,
        # bench/README.md); a pool without it gets the checkin listener instead.
        self._wraps_return = callable(getattr(engine.pool, "_return_conn", None))
        self._record_timeout_safely = hooks.guard("checkout_timeout", self._record_timeout)
        self._loop_error_safely = hooks.guard("loop_mismatch", self._loop_mismatch)

    # -- wiring ---------------------------------------------------------------------------

    def attach(self) -> None:
        """Add every listener and wrap the pool's acquire step."""
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
        self._listeners.extend((self.engine, identifier, fn) for identifier, fn in listeners)
        # Any engine-level listener sets engine._has_events, and then every statement of the
        # engine goes through the execution-event dispatch (+13-20 us a statement, measured:
        # bench/README.md). engine_disposed is dispatched regardless, so the flag is put back
        # as it was. handle_error then fires only when something else (OpenTelemetry's
        # instrumentation, the app) listens to execution events; a different-loop error is
        # also caught at checkout and when SQLAlchemy invalidates the connection.
        before = self.engine.__dict__.get("_has_events")
        for target, identifier, fn in self._listeners:
            event.listen(target, identifier, fn)
        if before is None:
            self.engine.__dict__.pop("_has_events", None)
        else:
            self.engine._has_events = before
        self._wrap(self.engine.pool)

    @property
    def waiting(self) -> int:
        """Checkouts waiting for a connection now."""
        return len(self._waiters)

    def flush(self) -> None:
        """Move what the hot path summed per thread since the last flush into the metrics."""
        with LOCK:
            self._put(self._sums.take(), MOVE)

    def unflushed(self, view: Unflushed) -> None:
        """Add to a scrape's ``view`` what :meth:`flush` would move now (the caller holds LOCK)."""
        self._put(self._sums.pending(), view)

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
        for target, identifier, fn in reversed(self._listeners):
            if event.contains(target, identifier, fn):
                event.remove(target, identifier, fn)
        self._listeners.clear()
        for pool in [self._pool, *self._old_pools]:
            if pool is not None:
                self._unwrap(pool)
        self._pool = None
        for finalizer in self._finalizers:
            finalizer.detach()
        self._finalizers.clear()
        self._idle_in_old.clear()
        self._metrics.unbind_pool(self.name)

    def _wrap(self, pool: Pool) -> None:
        """Wrap ``pool.connect``: SQLAlchemy has no "checkout started" event, and a checkout
        that times out fires no event at all, so waiting time, waiters and timeouts are
        measured around the call that ``Engine.raw_connection`` makes."""
        original = pool.connect
        tracker = self
        waiters = self._waiters
        record_checkout = self._record_checkout
        checkout_failed = self._checkout_failed
        record_timeout = self._record_timeout_safely
        loop_error = self._loop_error_safely
        pool_id = self._key(pool)

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
            except BaseException as exc:
                waiters.pop()
                if isinstance(exc, RuntimeError):
                    loop_error(exc)
                raise
            now = perf_counter()
            waiters.pop()
            try:
                record_checkout(connection, now, now - started, pool_id)
            except Exception as exc:
                checkout_failed(exc)
            return connection

        connect.__pool_observer__ = (tracker, original)  # type: ignore[attr-defined]
        pool.connect = connect  # type: ignore[method-assign]
        if self._wraps_return:
            original_return = pool._return_conn
            on_checkin = self._on_checkin

            def return_conn(record: ConnectionPoolEntry) -> None:
                on_checkin(None, record)  # cannot raise: it catches its own errors
                original_return(record)

            return_conn.__pool_observer__ = (tracker, original_return)  # type: ignore[attr-defined]
            pool._return_conn = return_conn  # type: ignore[method-assign]
        self._pool = pool

    def _key(self, pool: Pool) -> int:
        key = self._keys.get(pool)
        if key is None:
            key = self._keys[pool] = next(_pool_keys)
        return key

    def _unwrap(self, pool: Pool) -> None:
        for name in ("connect", "_return_conn"):
            wrapper = pool.__dict__.get(name)
            marker = getattr(wrapper, "__pool_observer__", None)
            if marker is None or marker[0] is not self:
                continue
            original = marker[1]
            if getattr(original, "__self__", None) is pool:
                delattr(pool, name)  # back to the class's method
            else:
                setattr(pool, name, original)

    # -- the acquire seam -----------------------------------------------------------------

    def _record_checkout(
        self, connection: PoolProxiedConnection, now: float, waited: float, pool_id: int
    ) -> None:
        scope = request_now()
        info = connection.info
        stamp = info[CHECKOUT] = (now, scope, pool_id)  # StaticPool re-hands it: replaced
        self.held[id(info)] = stamp
        if self._batched:
            sums = self._slot()
            if self.exemplars:
                self._m.checkouts.inc()
                self._m.checkout_duration.observe(waited, _exemplar())
            else:
                sums[_CHECKOUTS] += 1
                sums[_WAIT_START + bisect_left(_WAIT_BOUNDS, waited)] += 1
                sums[_WAIT_SUM] += waited
            if scope is None:
                sums[_NONE_CHECKOUTS] += 1
                sums[_NONE_WAIT] += waited
        else:
            m = self._m
            m.checkouts.inc()
            m.checkout_duration.observe(waited, _exemplar() if self.exemplars else None)
            if scope is None:
                self._routes.count_outside(1, waited, 0.0)
        if scope is not None:
            if not scope.span_noted:
                remember_span(scope)
            scope.checkouts += 1
            scope.wait_seconds += waited
            scope.out += 1
            scope.out_since += now
        otel = self.otel
        if otel is not None:
            otel.waited(waited, self.span_events)
        if waited > self._slow_checkout and self._limiter.allow("pool.slow_checkout"):
            state = self.state()
            emit(
                "warning",
                "pool.slow_checkout",
                scope,
                pool=self.name,
                waited_seconds=round(waited, 6),
                threshold_seconds=self._slow_checkout,
                suppressed=self._limiter.take_suppressed("pool.slow_checkout"),
                **_pool_fields(state),
            )

    def _record_timeout(self, waited: float) -> None:
        m = self._m
        m.timeouts.inc()
        if self.exemplars:
            m.checkout_duration.observe(waited, _exemplar())
        else:
            m.checkout_duration.observe(waited)
        scope = request_now()
        if scope is not None:
            scope.wait_seconds += waited
        elif self._batched:
            self._slot()[_NONE_WAIT] += waited
        else:
            self._routes.count_outside(0, waited, 0.0)
        otel = self.otel
        if otel is not None:
            otel.timed_out(waited, self.span_events)
        if self._limiter.allow("pool.checkout_timeout"):
            emit(
                "warning",
                "pool.checkout_timeout",
                scope,
                pool=self.name,
                waited_seconds=round(waited, 6),
                suppressed=self._limiter.take_suppressed("pool.checkout_timeout"),
                **_pool_fields(self.state()),
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
            took = perf_counter() - started
            m.connect_duration.observe(took)
            otel = self.otel
            if otel is not None:
                otel.created(took)

    def _on_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        try:  # the hottest listener guards itself: one call less than Hooks.guard
            info = record.info
            if info.pop(GC, False):
                return  # a sync connection reclaimed by the garbage collector: see _on_reset
            stamp = info.pop(CHECKOUT, None)
            if stamp is None:
                return  # checked out before the observer was attached
            self.held.pop(id(info), None)
            pool_id = stamp[2]
            if pool_id in self._idle_in_old:  # back to a pool dispose() replaced: stays open
                info[IDLE_IN_OLD] = pool_id
                with self._lock:
                    self._idle_in_old[pool_id] += 1
            self._returned(stamp, perf_counter(), live=True)
        except Exception as exc:
            self._checkin_failed(exc)

    def _returned(self, stamp: Stamp, now: float, live: bool = False) -> None:
        """A connection came back (``live``: in the context of the code that returned it, so
        the current span is the right one for exemplars and span events)."""
        started, scope, _ = stamp
        held = now - started
        if self._batched:
            sums = self._slot()
            if live and self.exemplars:
                self._m.hold.observe(held, _exemplar())
            else:
                sums[_HOLD_START + bisect_left(_HOLD_BOUNDS, held)] += 1
                sums[_HOLD_SUM] += held
            if scope is None:
                sums[_NONE_HOLD] += held
        else:
            self._m.hold.observe(held, _exemplar() if live and self.exemplars else None)
            if scope is None:
                self._routes.count_outside(0, 0.0, held)
        if scope is not None:
            scope.out -= 1
            scope.out_since -= started
            if scope.finished:  # returned after the response: counted straight away
                self._routes.held(scope, held)
            else:
                scope.hold_seconds += held
        otel = self.otel
        if otel is not None:
            otel.used(held, live and self.span_events)

    def _on_reset(
        self, dbapi_connection: Any, record: ConnectionPoolEntry | None, state: Any
    ) -> None:
        if record is None:
            return  # a detached connection being closed
        if state.asyncio_safe and not getattr(record, "needs_gc", False):
            return  # the ordinary return of a connection
        self._collected(record)
        record.info[GC] = True  # for checkin (sync) or detach (async) that follow

    def _collected(self, record: ConnectionPoolEntry) -> None:
        """The garbage collector is reclaiming a connection nobody returned. This runs inside a
        finalizer (pool/base.py _finalize_fairy), so only lock-free work here."""
        info = record.info
        stamp = info.pop(CHECKOUT, None)
        self.held.pop(id(info), None)
        self._hooks.pending.append((self._reclaimed, stamp, perf_counter()))

    def _reclaimed(self, stamp: Stamp | None, now: float) -> None:
        self._m.reclaimed.inc()
        if stamp is None:
            return
        self._returned(stamp, now)
        started, scope, _ = stamp
        if self._limiter.allow("pool.connection_reclaimed"):
            emit(
                "warning",
                "pool.connection_reclaimed",
                scope,
                pool=self.name,
                held_seconds=round(now - started, 3),
                hint="a connection or session was never closed; use 'async with' or close it "
                "in a finally block",
            )

    def _on_invalidate(self, dbapi_connection: Any, record: ConnectionPoolEntry, exc: Any) -> None:
        if isinstance(exc, RuntimeError):  # e.g. a reset that failed on another event loop
            self._hooks.pending.append((self._loop_mismatch, exc))
        info = record.info
        info[CLOSE_REASON] = "invalidated"
        stamp = info.get(CHECKOUT)
        self._hooks.pending.append(
            (
                self._log_invalidated,
                type(exc).__name__ if exc else None,
                getattr(exc, "sqlstate", None)
                or getattr(getattr(exc, "orig", None), "sqlstate", None),
                stamp[1] if stamp else request_now(),
                current_span_context(),
            )
        )

    def _log_invalidated(
        self, error: str | None, sqlstate: object, scope: RequestScope | None, span: Any
    ) -> None:
        if self._limiter.allow("pool.connection_invalidated"):
            emit(
                "warning",
                "pool.connection_invalidated",
                scope,
                span=span,
                pool=self.name,
                error=error,
                sqlstate=sqlstate if isinstance(sqlstate, str) else None,
            )

    def _on_handle_error(self, context: Any) -> None:
        self._loop_mismatch(context.original_exception)

    def _loop_mismatch(self, error: BaseException | None) -> None:
        """Log (once a while) an engine used from a second event loop."""
        # asyncio raises a plain RuntimeError; its message is fixed text (no SQL, no values)
        if (
            isinstance(error, RuntimeError)
            and "attached to a different loop" in str(error)
            and self._limiter.allow("pool.loop_mismatch")
        ):
            emit(
                "error",
                "pool.loop_mismatch",
                pool=self.name,
                error=type(error).__name__,
                hint="the engine was used from a second event loop ('Future attached to a "
                "different loop'): create the engine inside the loop that uses it, call "
                "'await engine.dispose()' before reusing it on a new loop, or use NullPool "
                "in tests",
            )

    def _on_soft_invalidate(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, exc: Any
    ) -> None:
        record.info[CLOSE_REASON] = "soft_invalidated"

    def _on_close(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Can run in a finalizer (an overflow connection discarded on a GC'd checkin): defer.
        reason = record.info.pop(CLOSE_REASON, "closed")
        self._hooks.pending.append((self._m.closed[reason].inc,))
        old_pool = record.info.pop(IDLE_IN_OLD, None)
        if old_pool is not None:
            self._hooks.pending.append((self._left_old_pool, old_pool))

    def _left_old_pool(self, pool_id: int) -> None:
        """A connection idle in a replaced pool was closed (with a close event)."""
        with self._lock:
            if pool_id in self._idle_in_old:
                self._idle_in_old[pool_id] = max(0, self._idle_in_old[pool_id] - 1)

    def _old_pool_collected(self, pool_id: int) -> None:
        """A replaced pool was garbage-collected: its idle connections went with it, unseen."""
        with self._lock:
            gone = self._idle_in_old.pop(pool_id, 0)
        if gone:
            self._m.closed["garbage_collected"].inc(gone)

    def _on_detach(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        info = record.info
        if info.pop(GC, False):
            reason = "garbage_collected"  # _on_reset saw it first
        elif not self._listens_to_reset and _in_gc_cleanup():
            reason = "garbage_collected"
            self._collected(record)
        else:
            reason = "detached"
            stamp = info.pop(CHECKOUT, None)
            self.held.pop(id(info), None)
            if stamp is not None:  # the app detached a checked-out connection from the pool
                self._hooks.pending.append((self._returned, stamp, perf_counter()))
        self._hooks.pending.append((self._m.closed[reason].inc,))

    def _on_engine_disposed(self, engine: Engine) -> None:
        # dispose() swapped in a new pool; listeners moved with it (Pool.recreate copies the
        # dispatch), the wrapper did not. Connections still out of the old pool still count.
        if engine.pool is self._pool:
            return
        old = self._pool
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
        pool = self.engine.pool
        waiting = self.waiting
        current = self._key(pool)
        stamps = list(self.held.values())  # one C call: no other thread runs meanwhile
        out_of_current = sum(1 for stamp in stamps if stamp[2] == current)
        out_of_old_pools = len(stamps) - out_of_current
        # A connection returned to a pool that dispose() replaced stays open, idle in that old
        # pool, until the old pool is garbage-collected (dispose() closes only the connections
        # idle at the time): the server still counts it, so do we.
        idle_in_old_pools = sum(
            old.checkedin() for old in list(self._old_pools) if isinstance(old, QueuePool)
        )
        if isinstance(pool, QueuePool):
            size = pool.size()
            max_overflow = getattr(pool, "_max_overflow", 0)
            return PoolState(
                size=size,
                max_connections=-1 if max_overflow < 0 else size + max_overflow,
                checked_out=pool.checkedout() + out_of_old_pools,
                checked_in=pool.checkedin() + idle_in_old_pools,
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


def _pool_fields(state: PoolState) -> dict[str, int]:
    """A pool's state the way HikariCP logs it: total, active, idle, waiting (and the limits)."""
    return {
        "total": state.checked_out + state.checked_in,
        "active": state.checked_out,
        "idle": state.checked_in,
        "waiting": state.waiting,
        "size": state.size,
        "max_connections": state.max_connections,
    }


def _exemplar() -> dict[str, str] | None:
    """The current span's ids as a Prometheus exemplar (shown in OpenMetrics output)."""
    context = current_span_context()
    if context is None:
        return None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }
