"""The session tracker: ORM sessions open (holding a transaction), and the ones that leak.

A session is *open* from the start of its root transaction (the moment it can hold a
connection) until that transaction ends (commit, rollback, close). SQLAlchemy has no session
open/close events; the root transaction's create/end events are exactly that span.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from threading import get_ident
from time import perf_counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction

from observer._hooks import Hooks
from observer._logs import RateLimiter, emit, remember_span
from observer.attribution._route_metrics import RouteMetrics
from observer.attribution._scope import RequestScope, request_now, route_of
from observer.metrics._batching import (
    LOCK,
    MOVE,
    HistogramSlots,
    Sink,
    ThreadSums,
    Unflushed,
    can_batch,
)
from observer.metrics._families import HOLD_BUCKETS, Metrics
from observer.sessions import _created
from observer.sessions import _origin as origins
from observer.sessions._created import ATTRIBUTE as _CREATED
from observer.sessions._leak_log import LeakLog
from observer.sessions._leak_origins import LeakOrigins

MAX_LEAK_ORIGINS = 100  # distinct (reason, route, origin) kept for snapshot(); counters go on

# Summed per thread on the hot path, moved into the metrics on flush (metrics/_batching.py).
_OPENED, _CLOSED = 0, 1
_DURATION = HistogramSlots(2, HOLD_BUCKETS)
_DURATION_START, _DURATION_BOUNDS, _DURATION_SUM = _DURATION.start, _DURATION.bounds, _DURATION.sum


@dataclass(slots=True, eq=False)
class OpenSession:
    """What is known about one open session (no strong reference to the session itself)."""

    key: int
    started: float
    scope: RequestScope | None
    origin: origins.Origin | None  # where its transaction began (its first statement)
    created: origins.Origin | None = None  # where the session was created
    ref: weakref.ref[Session] | None = None
    reported: str | None = None  # the leak reason it was counted under (once, the first found)
    closed: bool = False  # its transaction ended (commit, rollback, close); not by the GC
    tracker: SessionTracker | None = None

    @property
    def route(self) -> str:
        return route_of(self.scope)

    @property
    def where(self) -> str | None:
        """Where its transaction began, as logged (``None`` without origins)."""
        return str(self.origin) if self.origin else None

    @property
    def created_at(self) -> str | None:
        """Where the session was created, when that is another line than :attr:`where`."""
        created = self.created
        return str(created) if created is not None and created != self.origin else None

    def __call__(self, _: object, clock: Callable[[], float] = perf_counter) -> None:
        """The callback of :attr:`ref`: the session was garbage-collected while open. Runs in a
        finalizer, so lock-free work only. (The record is its own callback: a closure per
        session would be three more objects for the garbage collector.)"""
        tracker = self.tracker
        if tracker is not None:
            tracker._hooks.pending.append((tracker._collected, self, clock()))


class SessionTracker:
    """Listens to every ``Session``; tracks the ones bound to watched engines."""

    def __init__(
        self,
        metrics: Metrics,
        hooks: Hooks,
        routes: RouteMetrics,
        *,
        leak_threshold: float,
        capture_origin: bool,
        limiter: RateLimiter,
        max_origins: int = 100,
    ) -> None:
        self._m = metrics
        self._hooks = hooks
        self._routes = routes
        self._threshold = leak_threshold
        self._capture_origin = capture_origin
        self._limiter = limiter
        self._log = LeakLog(limiter)
        self._origins = LeakOrigins(metrics.session_leak_origins, max_origins=max_origins)
        self._engines: set[int] = set()  # id() of watched sync engines
        self.open: dict[int, OpenSession] = {}
        # (reason, route, origin) -> leaks: where leaks come from, for snapshot() and reports
        self.leak_origins: dict[tuple[str, str, str], int] = {}
        # origin -> sessions garbage-collected while open, whatever they were counted as first
        self.collected_origins: dict[str, int] = {}
        # The two hooks run for every session: each catches its own errors (one call less
        # than Hooks.guard, whose *args wrapper is a frame and a tuple a call).
        self._begin_failed = hooks.reporter("session_begin")
        self._end_failed = hooks.reporter("session_end")
        self._listeners = (
            ("after_transaction_create", self._on_begin),
            ("after_transaction_end", self._on_end),
        )
        self._attached = False
        self._sums = ThreadSums(_DURATION.end)
        self._slot = self._sums.slot
        self._by_thread = self._sums.by_thread  # looked up inline on the hot path
        # as in the pool tracker: batched only where every read of the registry adds the sums
        self._batched = not metrics.multiprocess and can_batch(
            metrics.session_duration, HOLD_BUCKETS
        )

    def flush(self) -> None:
        """Move the sessions opened and closed since the last flush into the metrics, and log
        the leaks not logged yet (the summary lines)."""
        with LOCK:
            self._put(self._sums.take(), MOVE)
        self._log.flush()

    def unflushed(self, view: Unflushed) -> None:
        """Add to a scrape's ``view`` what :meth:`flush` would move now (the caller holds LOCK)."""
        self._put(self._sums.pending(), view)

    def _put(self, delta: list[float], sink: Sink) -> None:
        m = self._m
        sink.count(m.sessions_opened, (), m.sessions_opened, delta[_OPENED])
        sink.count(m.sessions_closed, (), m.sessions_closed, delta[_CLOSED])
        sink.histogram(m.session_duration, (), m.session_duration, _DURATION, delta)

    def add_engine(self, engine: Engine) -> None:
        self._engines.add(id(engine))
        self.listen()

    def listen(self) -> None:
        """Listen to every ``Session`` (once); :meth:`_on_begin` picks the ones tracked."""
        if not self._attached:
            for identifier, fn in self._listeners:
                event.listen(Session, identifier, fn)
            if self._capture_origin:
                _created.install()
            self._attached = True

    def remove_engine(self, engine: Engine) -> None:
        self.forget_engine(id(engine))

    def forget_engine(self, key: int) -> None:
        """Stop tracking the sessions of the engine whose id is ``key`` (it may be gone)."""
        self._engines.discard(key)

    def detach(self) -> None:
        for identifier, fn in self._listeners:
            if event.contains(Session, identifier, fn):
                event.remove(Session, identifier, fn)
        if self._attached and self._capture_origin:
            _created.uninstall()
        self._attached = False
        self._engines.clear()

    every_engine = False
    """Track the sessions of every engine, watched or not (the pytest leak guard's tracker)."""

    def _on_begin(
        self,
        session: Session,
        transaction: SessionTransaction,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        try:
            if transaction.parent is not None:
                return  # a nested transaction
            if not self.every_engine:
                bind: Any = session.bind
                if isinstance(bind, Connection):
                    bind = bind.engine
                if bind is None or id(bind) not in self._engines:
                    return  # a session of an engine nobody watches
            scope = request_now()
            if self._capture_origin:  # (code, line) each: formatted only if a leak is shown
                origin = origins.capture()
                created = session.__dict__.get(_CREATED)  # set by the Session.__init__ wrapper
            else:
                origin = created = None
            key = id(session)
            record = OpenSession(key, clock(), scope, origin, created, None, None, False, self)
            record.ref = weakref.ref(session, record)
            self.open[key] = record
            if self._batched:
                (self._by_thread.get(get_ident()) or self._slot())[_OPENED] += 1
            else:
                self._m.sessions_opened.inc()
            if scope is not None:
                if not scope.span_noted:
                    remember_span(scope)
                scope.sessions_opened += 1
                if not scope.finished:  # checked for request_end leaks when the request ends
                    if scope.sessions is None:
                        scope.sessions = [record]
                    else:
                        scope.sessions.append(record)
        except Exception as exc:
            self._begin_failed(exc)

    def _on_end(
        self,
        session: Session,
        transaction: SessionTransaction,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        try:
            if transaction.parent is not None:
                return
            record = self.open.pop(id(session), None)
            if record is None:
                return
            record.ref = None  # the session ended properly: its finalizer callback is dropped
            record.closed = True
            now = clock()
            self._ended(record, now)
            if record.reported is not None:
                self._resolved(record, "closed", now)
        except Exception as exc:
            self._end_failed(exc)

    def _ended(self, record: OpenSession, now: float) -> None:
        took = now - record.started
        if self._batched:
            sums = self._by_thread.get(get_ident()) or self._slot()
            sums[_CLOSED] += 1
            sums[_DURATION_START + bisect_left(_DURATION_BOUNDS, took)] += 1
            sums[_DURATION_SUM] += took
        else:
            self._m.sessions_closed.inc()
            self._m.session_duration.observe(took)

    def _collected(self, record: OpenSession, now: float) -> None:
        """A session was garbage-collected while it still held its transaction."""
        if self.open.get(record.key) is record:
            del self.open[record.key]
        self._ended(record, now)
        where = record.where or "unknown"
        if where in self.collected_origins or len(self.collected_origins) < MAX_LEAK_ORIGINS:
            self.collected_origins[where] = self.collected_origins.get(where, 0) + 1
        if record.reported is None:
            self.report(record, "garbage_collected", now)
        else:  # counted already (request_end, too_old): what became of it counts apart
            self._resolved(record, "garbage_collected", now)

    def _resolved(self, record: OpenSession, how: str, now: float) -> None:
        """A session counted as leaked ended later: ``how`` is closed or garbage_collected."""
        route = self._routes.label(record.route)
        self._m.session_leaks_resolved.labels(record.reported, route, how).inc()
        if self._limiter.allow("session.released"):
            emit(
                "info",
                "session.released_after_leak",
                record.scope,
                reason=record.reported,
                how=how,
                age_seconds=round(now - record.started, 3),
                route=route,
                origin=record.where,
                created_at=record.created_at,
            )

    def report(self, record: OpenSession, reason: str, now: float) -> None:
        """Count and log one leak. A session counts once, under the reason it is first found
        with (``too_old``, ``request_end`` or ``garbage_collected``); what becomes of it later
        is counted by :meth:`_resolved`."""
        if record.reported is not None:
            return
        record.reported = reason
        route = self._routes.label(record.route)
        self._m.session_leaks.labels(reason, route).inc()
        where = record.where  # formatted here, once per leak: never on the per-session path
        self._origins.count(where, reason)
        key = (reason, route, where or "unknown")
        if key in self.leak_origins or len(self.leak_origins) < MAX_LEAK_ORIGINS:
            self.leak_origins[key] = self.leak_origins.get(key, 0) + 1
        age = now - record.started
        self._log.leak(record.scope, reason, route, where, record.created_at, age)

    def check_request_end(
        self, records: list[OpenSession], clock: Callable[[], float] = perf_counter
    ) -> None:
        """Report the sessions of a finished request that still hold their transaction."""
        for record in records:
            if not record.closed:
                self.report(record, "request_end", clock())

    def check_age(
        self, now: float | None = None, clock: Callable[[], float] = perf_counter
    ) -> None:
        """Report sessions open longer than the threshold (once each)."""
        now = clock() if now is None else now
        threshold = self._threshold
        for record in list(self.open.values()):
            if record.reported is None and now - record.started > threshold:
                self.report(record, "too_old", now)
        self._log.flush()
