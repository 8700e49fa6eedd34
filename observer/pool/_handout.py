"""Double handouts: a connection the pool hands out, or takes back, while another owner still
holds it, counted and logged with what is known of both owners."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Any

from sqlalchemy.pool import ConnectionPoolEntry

from observer._compat.sqlalchemy import in_gc_cleanup
from observer._logs import emit
from observer._sweeper import on_observer_thread
from observer.attribution._scope import RequestScope, route_of
from observer.pool._base import CHECKOUT, GC, Reclaimed, Stamp, TrackerParts

HINT = (
    "a connection that was never returned (a leak upstream) was reclaimed by the garbage "
    "collector while another request waited for the pool, and SQLAlchemy's finalizer gave the "
    "connection back a second time: two requests now share one database connection ('another "
    "operation is in progress'). Close every session and connection ('async with'); the "
    "pool.connection_reclaimed and session leak logs name the request and line that leaked"
)


HANDED_BACK: Any = object()
"""Left on a record the pool took back while a holder kept it (counted then): the checkout
that follows is the same occurrence."""


# The record's state, in one place (the record's own ``__dict__``, see observer/pool/_base.py).
# The hot path reads it twice more, inline: the checkout's ``info.setdefault(CHECKOUT, stamp)``
# (a live stamp already there is the signal) and the return's ``info.pop(GC, False)``.
def mark(info: dict[Any, Any], value: object) -> None:
    """Leave ``value`` (``True``, a ``Reclaimed`` or :data:`HANDED_BACK`) in the record's
    slot for rare states, which every return pops."""
    info[GC] = value


def take_mark(info: dict[Any, Any]) -> object:
    """Take the record's rare-state mark (``None`` when there is none)."""
    return info.pop(GC, None)


class Handouts(TrackerParts):
    """The tracker's rare paths around a checkout and a return that find another owner."""

    def _reclaim_started(self, record: ConnectionPoolEntry, stamp: Stamp | None) -> None:
        """The garbage collector's finalizer detached ``record`` (checked out as ``stamp``) and
        put it back in the pool; it now awaits the close. The mark waits here until the checkout
        that takes the record next reconnects it, so the return of that reconnected checkout
        is the one that pops it."""
        self._reclaiming[record] = Reclaimed(stamp)

    def _reconnected(self, record: ConnectionPoolEntry) -> None:
        """``record`` opened a new connection (a cold path): carry a pending reclaim's mark over
        to its fresh ``info``, for the return that pops it."""
        reclaimed = self._reclaiming.pop(record, None)
        if reclaimed is not None:
            mark(record.__dict__, reclaimed)

    def _checked_out_again(self, info: dict[Any, Any], stamp: Stamp, prior: Stamp) -> None:
        """A checkout found ``prior``, another checkout's stamp, still on the record."""
        info[CHECKOUT] = stamp  # the newest holder takes the record's slot
        if prior[2] != stamp[2] or stamp[2] not in self._queue_pools:
            return  # a stamp another tracker left, or a pool that shares its connection
        if take_mark(info) is not HANDED_BACK:  # else the return counted this occurrence
            self._double_handout("checkout", prior, stamp, "handed_to")
        self._hooks.pending.append((self._returned, prior, stamp[0]))  # the slot's hold ends

    def _returned_again(
        self, info: dict[Any, Any], reclaimed: Reclaimed, clock: Callable[[], float] = perf_counter
    ) -> bool:
        """A record whose checkout the garbage collector reclaimed comes back to the pool. From
        that reclaim's finalizer, it means another checkout took the record while the finalizer
        awaited the close: SQLAlchemy returns it anyway, and the pool will hand out a connection
        in use. Runs inside that finalizer: lock-free, deferred work only. Returns whether it
        was that (the holder keeps its stamp), else it is an ordinary return."""
        if not in_gc_cleanup():
            return False
        holder = info.get(CHECKOUT)
        mark(info, HANDED_BACK)
        self._hooks.pending.append(
            (self._double_handout, "return", holder, reclaimed.stamp, "returned_by", clock())
        )
        return True

    def _double_handout(
        self,
        detected_at: str,
        holder: Stamp | None,
        other: Stamp | None,
        role: str,
        now: float | None = None,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        """Count one double handout and log both owners."""
        self._m.double_handouts.inc()
        if not self._limiter.allow("pool.double_handout"):
            return
        now = clock() if now is None else now
        emit(
            "warning",
            "pool.double_handout",
            holder[1] if holder is not None else None,
            pool=self.name,
            detected_at=detected_at,
            held_by=owner(holder, now),
            **{role: owner(other, now)},
            suppressed=self._limiter.take_suppressed("pool.double_handout"),
            hint=HINT,
        )

    def _finalizer_off_loop(self) -> None:
        """Called on the garbage-collection path of an async connection: count and log it when
        it runs on one of the observer's threads (the finalizer then terminated the driver's
        connection away from its event loop). Runs inside the finalizer: deferred work."""
        if on_observer_thread():
            self._hooks.pending.append((self._log_finalizer_off_loop,))

    def _log_finalizer_off_loop(self) -> None:
        self._m.finalizers_off_loop.inc()
        if self._limiter.allow("pool.finalizer_off_loop"):
            emit(
                "warning",
                "pool.finalizer_off_loop",
                None,
                pool=self.name,
                suppressed=self._limiter.take_suppressed("pool.finalizer_off_loop"),
                hint="a garbage collection ran on one of pool-observer's threads and reclaimed "
                "a leaked async connection there, off the event loop; close sessions and "
                "connections ('async with') so the garbage collector has none to reclaim",
            )


def owner(stamp: Stamp | None, now: float) -> dict[str, Any] | None:
    """What the observer knows of the checkout stamped ``stamp``: its request's route and id,
    the code that opened the request's sessions, and how long it has held the connection."""
    if stamp is None:
        return None
    started, scope, _ = stamp
    return {
        "route": route_of(scope),
        "request_id": scope.request_id if scope is not None else None,
        "session_origins": session_origins(scope),
        "held_seconds": round(now - started, 3),
    }


def session_origins(scope: RequestScope | None) -> list[str]:
    """Where the request's sessions were opened (with ``capture_origin``), each once."""
    found: list[str] = []
    for record in (scope.sessions if scope is not None else None) or ():
        origin = getattr(record, "origin", None)
        if origin is not None and str(origin) not in found:
            found.append(str(origin))
    return found
