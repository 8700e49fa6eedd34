"""A watched pool's lifecycle events: connects, invalidations, closes, detaches and connections
the garbage collector reclaims."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from sqlalchemy.pool import ConnectionPoolEntry

from observer._compat.sqlalchemy import in_gc_finalizer, record_needs_gc
from observer._logs import current_span_context, emit
from observer.attribution._scope import RequestScope, request_now
from observer.pool._acquire import Checkouts
from observer.pool._base import CHECKOUT, CLOSE_REASON, CONNECT_STARTED, GC, IDLE_IN_OLD, Stamp


class PoolEvents(Checkouts):
    """The tracker's pool-event listeners (checkin is the return seam's: see Checkouts)."""

    def _on_do_connect(
        self,
        dialect: Any,
        record: ConnectionPoolEntry | None,
        cargs: Any,
        cparams: Any,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        if record is not None:
            record.__dict__[CONNECT_STARTED] = clock()
        name = self._application_name
        if name and dialect.name == "postgresql":
            if "application_name" in cparams:
                pass  # the app's own (the URL query, connect_args)
            elif dialect.driver == "asyncpg":
                settings = dict(cparams.get("server_settings") or {})
                if "application_name" not in settings:
                    settings["application_name"] = name
                    cparams["server_settings"] = settings
            elif "application_name" not in cparams:
                cparams["application_name"] = name

    def _on_connect(
        self,
        dbapi_connection: Any,
        record: ConnectionPoolEntry,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        if self._reclaiming:
            self._reconnected(record)
        m = self._m
        m.opened.inc()
        started = record.__dict__.pop(CONNECT_STARTED, None)
        if started is not None:
            took = clock() - started
            m.connect_duration.observe(took)
            otel = self.otel
            if otel is not None:
                otel.created(took)

    def _on_reset(
        self, dbapi_connection: Any, record: ConnectionPoolEntry | None, state: Any
    ) -> None:
        if record is None:
            return  # a detached connection being closed
        if state.asyncio_safe and not record_needs_gc(record):
            return  # the ordinary return of a connection
        self._collected(record)
        record.__dict__[GC] = True  # for checkin (sync) or detach (async) that follow

    def _collected(
        self, record: ConnectionPoolEntry, clock: Callable[[], float] = perf_counter
    ) -> Stamp | None:
        """The garbage collector is reclaiming a connection nobody returned (its stamp, if it
        had one). This runs inside a finalizer (pool/base.py _finalize_fairy), so only
        lock-free work here."""
        info = record.__dict__
        stamp: Stamp | None = info.pop(CHECKOUT, None)
        self.held.pop(id(info), None)
        self._hooks.pending.append((self._reclaimed, stamp, clock()))
        return stamp

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
        info = record.__dict__
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
        record.__dict__[CLOSE_REASON] = "soft_invalidated"

    def _on_close(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Can run in a finalizer (an overflow connection discarded on a GC'd checkin): defer.
        reason = record.__dict__.pop(CLOSE_REASON, "closed")
        self._hooks.pending.append((self._m.closed[reason].inc,))
        old_pool = record.__dict__.pop(IDLE_IN_OLD, None)
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

    def _on_detach(
        self,
        dbapi_connection: Any,
        record: ConnectionPoolEntry,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        info = record.__dict__
        if info.pop(GC, False) is True:
            reason = "garbage_collected"  # _on_reset saw it first
        elif not self._listens_to_reset and in_gc_finalizer():
            reason = "garbage_collected"
            # the finalizer now awaits the close, and may return the record once more after
            # another checkout took it: that return recognises it (_handout.py)
            self._reclaim_started(record, self._collected(record))
            self._finalizer_off_loop()
        else:
            reason = "detached"
            stamp = info.pop(CHECKOUT, None)
            self.held.pop(id(info), None)
            if stamp is not None:  # the app detached a checked-out connection from the pool
                self._hooks.pending.append((self._returned, stamp, clock()))
        self._hooks.pending.append((self._m.closed[reason].inc,))
