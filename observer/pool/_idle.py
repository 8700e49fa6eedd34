"""Held idle: how long each checked-out connection goes with no statement running, seen at the
dialect's execute, commit and rollback steps of one watched engine.

Cost model: each statement (and COMMIT / ROLLBACK) pays one wrapper call, two clock reads, a
C attribute lookup and two dict lookups; each checkout pays one list at its first statement,
and one dict pop and three additions to per-thread sums when it comes back (moved into the
histogram and the ``route="none"`` counter on flush, as the tracker's own sums). Nothing is
captured unless a gap is longer than ``idle_gap_log_seconds``: only then the app line where
database work resumed is looked up and ``pool.held_idle`` logged (rate limited).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from time import perf_counter
from typing import Any

from observer._compat.sqlalchemy import (
    CONNECTION_STEPS,
    context_state,
    in_gc_cleanup,
    state_of,
    unwrap_dialect,
    wrap_dialect,
)
from observer._hooks import Hooks
from observer._logs import RateLimiter, emit
from observer.attribution._route_metrics import RouteMetrics
from observer.attribution._scope import NO_ROUTE
from observer.metrics._batching import HistogramSlots, Sink, ThreadSums, Unflushed, can_batch
from observer.metrics._families import WAIT_BUCKETS, Metrics
from observer.pool._base import CHECKOUT, Stamp
from observer.pool._handout import session_origins

# One checkout's state, a list indexed by these (created at its first statement):
_STAMP = 0  # the checkout stamp it belongs to (its identity: a stale state never matches)
_LAST = 1  # perf_counter() when the connection last went idle: the checkout or a step's end
_IDLE = 2  # idle seconds so far
_LONGEST = 3  # the longest gap so far
_BUSY = 4  # perf_counter() when the running step started; 0.0 while idle
State = list[Any]

# The per-thread sums (single process): the longest gaps' histogram, then idle outside requests.
_GAP = HistogramSlots(0, WAIT_BUCKETS)
_GAP_START, _GAP_BOUNDS, _GAP_SUM = _GAP.start, _GAP.bounds, _GAP.sum
_NONE_IDLE = _GAP.end

HINT = (
    "the connection sat in its transaction with no statement running (an HTTP call, a queue, a "
    "sleep or a slow computation awaited in between) while other requests may wait for the "
    "pool: do the slow await before or after the transaction, or release the connection for "
    "it (docs/runbooks.md#sqlalchemyrouteholdsconnectionsidle)"
)


class IdleWatch:
    """One pool tracker's idle measurement: wraps its engine's dialect steps, keeps the state of
    each checkout that ran one, and counts the idle time when the connection comes back."""

    def __init__(
        self,
        name: str,
        metrics: Metrics,
        routes: RouteMetrics,
        hooks: Hooks,
        limiter: RateLimiter,
        log_after: float | None,
        capture: Callable[[], object] | None,
    ) -> None:
        """``log_after``: ``idle_gap_log_seconds``; ``capture``: finds the app line running now
        (observer/sessions/_origin.py, passed in: the pool layer does not import sessions)."""
        self.name = name
        self._metrics = metrics
        self._gap = metrics.idle_gap.labels(name)  # bound once (removed with the pool's series)
        # Summed per thread and moved on flush like the tracker's (observer/metrics/_batching.py);
        # multiprocess mode, or a histogram the accessors cannot add to, observes every checkout.
        self._batched = not metrics.multiprocess and can_batch(self._gap, WAIT_BUCKETS)
        self._sums = ThreadSums(_NONE_IDLE + 1)
        self._slot = self._sums.slot
        self._routes = routes
        self._hooks = hooks
        self._limiter = limiter
        self._log_after = float("inf") if log_after is None else log_after
        self._capture = capture
        # id(stamp) -> state, for the checkouts out now that ran a step; popped when the
        # checkout ends, on every path (checkin, detach, garbage collection: the tracker's
        # _returned), so it holds at most one entry per connection out. Plain dict operations
        # only: atomic under the GIL.
        self.states: dict[int, State] = {}
        self.pool_keys: set[int] = set()  # keys of the pools its tracker stamps checkouts for
        self._failed = hooks.reporter("statement")
        self._dialect: Any = None

    # -- wiring -----------------------------------------------------------------------------

    def attach(self, dialect: Any) -> None:
        """Wrap ``dialect``'s execute, commit and rollback steps (restored by :meth:`detach`)."""
        self._dialect = dialect
        wrap_dialect(dialect, self, self._wrapper)

    def detach(self) -> None:
        if self._dialect is not None:
            unwrap_dialect(self._dialect, self)
            self._dialect = None
        self.states.clear()
        self.pool_keys.clear()  # a wrapper another one was stacked on stays: it measures nothing

    def _wrapper(self, name: str, original: Any) -> Any:
        """The measuring replacement of the dialect's step ``name`` (its exact signature: no
        argument packing on the hot path)."""
        begin, failed, clock = self._begin, self._failed, perf_counter
        if name in CONNECTION_STEPS:  # do_commit(connection), do_rollback(connection)
            step = name.removeprefix("do_")  # "commit", "rollback": what ended a gap

            def connection_step(dbapi_connection: Any) -> Any:
                try:
                    state = begin(state_of(dbapi_connection), clock(), step)
                except AttributeError:  # not a pool's connection (a dialect's own call)
                    state = None
                except Exception as exc:
                    state = None
                    failed(exc)
                try:
                    return original(dbapi_connection)
                finally:
                    if state is not None:
                        state[_BUSY] = 0.0
                        state[_LAST] = clock()

            return connection_step

        if name == "do_execute_no_params":

            def no_params_step(cursor: Any, statement: Any, context: Any = None) -> Any:
                try:
                    state = begin(context_state(context), clock(), "statement")
                except AttributeError:  # no execution context: not measured
                    state = None
                except Exception as exc:
                    state = None
                    failed(exc)
                try:
                    return original(cursor, statement, context)
                finally:
                    if state is not None:
                        state[_BUSY] = 0.0
                        state[_LAST] = clock()

            return no_params_step

        def statement_step(
            cursor: Any, statement: Any, parameters: Any, context: Any = None
        ) -> Any:
            # do_execute and do_executemany
            try:
                state = begin(context_state(context), clock(), "statement")
            except AttributeError:  # no execution context: not measured
                state = None
            except Exception as exc:
                state = None
                failed(exc)
            try:
                return original(cursor, statement, parameters, context)
            finally:
                if state is not None:
                    state[_BUSY] = 0.0
                    state[_LAST] = clock()

        return statement_step

    # -- the hot path -----------------------------------------------------------------------

    def _begin(self, info: dict[str, Any], now: float, step: str) -> State | None:
        """A step starts on the connection whose record attributes are ``info``: the gap since
        the connection went idle ends now. Its state, or None (a connection not checked out
        through this tracker)."""
        stamp = info.get(CHECKOUT)
        if stamp is None:
            return None
        state = self.states.get(id(stamp))
        if state is None:
            if stamp[2] not in self.pool_keys:
                return None  # another observer's checkout of the same engine
            state = self.states[id(stamp)] = [stamp, stamp[0], 0.0, 0.0, 0.0]
        gap = now - state[_LAST]
        state[_IDLE] += gap
        if gap > state[_LONGEST]:
            state[_LONGEST] = gap
        state[_BUSY] = now
        if gap > self._log_after:
            self._held_idle(stamp, gap, now, step)
        return state

    def returned(self, stamp: Stamp, now: float, live: bool) -> None:
        """The checkout ``stamp`` ended at ``now`` (``live``: in the code that returned it, not
        a garbage-collection path): its idle time goes to its route, its longest gap to the
        histogram. Called by the tracker's ``_returned`` on every path."""
        state = self.states.pop(id(stamp), None)
        if state is None:  # no step ran: the whole hold was idle
            gap = idle = longest = now - stamp[0]
        else:
            gap = 0.0 if state[_BUSY] else now - state[_LAST]
            idle = state[_IDLE] + gap
            longest = max(state[_LONGEST], gap)
        scope = stamp[1]
        if self._batched:
            sums = self._slot()
            sums[_GAP_START + bisect_left(_GAP_BOUNDS, longest)] += 1
            sums[_GAP_SUM] += longest
            if scope is None:
                sums[_NONE_IDLE] += idle
            else:
                self._routes.idle(scope, idle)
        else:
            self._gap.observe(longest)
            self._routes.idle(scope, idle)
        if live and gap > self._log_after:
            self._held_idle(stamp, gap, now, "checkin")

    def flush(self, sink: Sink) -> None:
        """Move the sums added since the last flush (the caller holds the batching LOCK)."""
        self._put(self._sums.take(), sink)

    def unflushed(self, view: Unflushed) -> None:
        """Add to a scrape's ``view`` what :meth:`flush` would move now."""
        self._put(self._sums.pending(), view)

    def _put(self, delta: list[float], sink: Sink) -> None:
        metrics, none = self._metrics, (NO_ROUTE,)
        sink.histogram(metrics.idle_gap, (self.name,), self._gap, _GAP, delta)
        outside = self._routes.children(NO_ROUTE).idle
        sink.count(metrics.route_idle, none, outside, delta[_NONE_IDLE])

    # -- the rare path ----------------------------------------------------------------------

    def _held_idle(self, stamp: Stamp, gap: float, now: float, ended_by: str) -> None:
        """Log ``pool.held_idle``: a gap longer than ``idle_gap_log_seconds`` ended."""
        if not self._limiter.allow("pool.held_idle") or in_gc_cleanup():
            return  # past the rate limit, or inside the garbage collector's finalizer
        started, scope, _ = stamp
        where = self._capture() if self._capture is not None else None
        emit(
            "warning",
            "pool.held_idle",
            scope,
            pool=self.name,
            idle_seconds=round(gap, 3),
            held_seconds=round(now - started, 3),
            ended_by=ended_by,
            resumed_at=str(where) if where is not None else None,
            session_origins=session_origins(scope),
            suppressed=self._limiter.take_suppressed("pool.held_idle"),
            hint=HINT,
        )

    # -- reading ----------------------------------------------------------------------------

    def activity(self, stamp: Stamp, now: float) -> tuple[str, float]:
        """What the connection checked out as ``stamp`` does at ``now``: ``("executing",
        seconds)`` or ``("idle", seconds)``, how long it has been so (lock-free, read-only)."""
        state = self.states.get(id(stamp))
        if state is None or state[_STAMP] is not stamp:
            return "idle", max(0.0, now - stamp[0])
        busy = state[_BUSY]
        if busy:
            return "executing", max(0.0, now - busy)
        return "idle", max(0.0, now - state[_LAST])
