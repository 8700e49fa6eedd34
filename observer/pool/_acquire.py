"""The acquire and return seams: wrappers around a pool's ``connect`` and ``_return_conn``, and
what a checkout, a timed-out checkout and a return record (the hot path)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from threading import get_ident
from time import perf_counter
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from observer._compat.sqlalchemy import Acquire, Return, state_of
from observer._logs import current_span_context, emit, remember_span
from observer.attribution._scope import ENDED, current_http, current_request, request_now
from observer.pool._base import (
    _CHECKOUTS,
    _HOLD_BOUNDS,
    _HOLD_START,
    _HOLD_SUM,
    _NONE_CHECKOUTS,
    _NONE_HOLD,
    _NONE_WAIT,
    _WAIT_BOUNDS,
    _WAIT_START,
    _WAIT_SUM,
    CHECKOUT,
    GC,
    IDLE_IN_OLD,
    Reclaimed,
    Stamp,
)
from observer.pool._handout import Handouts
from observer.pool._state import pool_fields

_request_get = current_request.get
_http_get = current_http.get
_http_set = current_http.set
_http_reset = current_http.reset


def acquire_wrapper(
    original: Acquire,
    waiters: list[None],
    record_checkout: Callable[[PoolProxiedConnection, float, float, int], None],
    checkout_failed: Callable[[Exception], None],
    record_timeout: Callable[[float], object],
    loop_error: Callable[[BaseException], object],
    pool_id: int,
    clock: Callable[[], float] = perf_counter,
) -> Acquire:
    """``pool.connect`` measured: SQLAlchemy has no "checkout started" event, and a checkout
    that times out fires no event at all, so waiting time, waiters and timeouts are measured
    around the call that ``Engine.raw_connection`` makes.

    The call runs without the HTTP request in the observer's context: an async pool takes a
    connection under ``asyncio.wait_for``/``asyncio.timeout(pool_timeout)`` (SQLAlchemy 2.0 on
    every checkout, 2.1 when it has to wait), the event loop's timer copies the context, and a
    cancelled timer stays in the loop's heap with that copy until its time (30 s by default).
    The request's holder and attribution scope would live on with it (bench/README.md,
    "Checkouts: nothing of a request outlives its pool timer"). The request is put back
    before anything is recorded; 150 ns."""

    def connect() -> PoolProxiedConnection:
        waiters.append(None)
        started = clock()
        token = None if _http_get() is None else _http_set(None)
        try:
            connection = original()
        except sa_exc.TimeoutError:
            if token is not None:
                _put_back(token, checkout_failed)
            waited = clock() - started
            waiters.pop()
            record_timeout(waited)
            raise
        except BaseException as exc:
            if token is not None:
                _put_back(token, checkout_failed)
            waiters.pop()
            if isinstance(exc, RuntimeError):
                loop_error(exc)
            raise
        if token is not None:
            _put_back(token, checkout_failed)
        now = clock()
        waiters.pop()
        try:
            record_checkout(connection, now, now - started, pool_id)
        except Exception as exc:
            checkout_failed(exc)
        return connection

    return connect


def _put_back(token: Any, failed: Callable[[Exception], None]) -> None:
    """The request back in the context after the pool's ``connect`` (never raises)."""
    try:
        _http_reset(token)
    except (ValueError, RuntimeError) as exc:  # another context: that request loses its route
        failed(exc)


def return_wrapper(
    original: Return, on_checkin: Callable[[Any, ConnectionPoolEntry], None]
) -> Return:
    """``pool._return_conn`` seen: every checkin calls it right after dispatching the checkin
    event, so it replaces a checkin listener (0.3-0.8 us a cycle less, bench/README.md)."""

    def return_conn(record: ConnectionPoolEntry) -> None:
        on_checkin(None, record)  # cannot raise: it catches its own errors
        original(record)

    return return_conn


class Checkouts(Handouts):
    """The tracker's hot path: a checkout, a timed-out checkout, a return. (The request's
    scope and this thread's sums are looked up inline: a call each less per event.)"""

    def _record_checkout(
        self, connection: PoolProxiedConnection, now: float, waited: float, pool_id: int
    ) -> None:
        scope = _request_get()
        if scope is None:
            http = _http_get()
            if http is not None:
                scope = http.request
                if scope is None or scope is ENDED:  # its first checkout (or it has ended)
                    scope = request_now()
        info = state_of(connection)
        stamp = (now, scope, pool_id)
        prior = info.setdefault(CHECKOUT, stamp)  # one dict operation, as the store it replaces
        if prior is not stamp:  # another checkout's stamp is still there (or StaticPool's)
            self._checked_out_again(info, stamp, prior)
        self.held[id(info)] = stamp
        if self._batched:
            sums = self._by_thread.get(get_ident()) or self._slot()
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
                **pool_fields(state),
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
                **pool_fields(self.state()),
            )

    def _on_checkin(
        self,
        dbapi_connection: Any,
        record: ConnectionPoolEntry,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        try:  # the hottest listener guards itself: one call less than Hooks.guard
            info = record.__dict__
            rare = info.pop(GC, False)  # every return pops it: the rare states cost no lookup
            if rare:
                if rare is True:
                    return  # a sync connection reclaimed by the garbage collector: see _on_reset
                if isinstance(rare, Reclaimed) and self._returned_again(info, rare):
                    return  # a double handout: the holder keeps the record (_handout.py)
            stamp = info.pop(CHECKOUT, None)
            if stamp is None:
                return  # checked out before the observer was attached
            self.held.pop(id(info), None)
            pool_id = stamp[2]
            if pool_id in self._idle_in_old:  # back to a pool dispose() replaced: stays open
                info[IDLE_IN_OLD] = pool_id
                with self._lock:
                    self._idle_in_old[pool_id] += 1
            self._returned(stamp, clock(), live=True)
        except Exception as exc:
            self._checkin_failed(exc)

    def _returned(self, stamp: Stamp, now: float, live: bool = False) -> None:
        """A connection came back (``live``: in the context of the code that returned it, so
        the current span is the right one for exemplars and span events)."""
        started, scope, _ = stamp
        held = now - started
        if self._batched:
            sums = self._by_thread.get(get_ident()) or self._slot()
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
        self._idle.returned(stamp, now, live)  # of the hold, the time no statement ran


def _exemplar() -> dict[str, str] | None:
    """The current span's ids as a Prometheus exemplar (shown in OpenMetrics output)."""
    context = current_span_context()
    if context is None:
        return None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }
