"""What the parts of a pool tracker share: its attributes, the keys it keeps on connection
records, the checkout stamp, the hot path's sum slots and the OpenTelemetry port it calls."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from observer.attribution._scope import RequestScope
from observer.metrics._batching import HistogramSlots
from observer.metrics._families import HOLD_BUCKETS, WAIT_BUCKETS

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import ConnectionPoolEntry

    from observer._hooks import Hooks
    from observer._logs import RateLimiter
    from observer.attribution._route_metrics import RouteMetrics
    from observer.metrics._families import PoolMetrics
    from observer.pool._state import PoolState

# State of a checkout lives on the connection record, never in a map keyed by
# ``id(dbapi_connection)``: the record is what SQLAlchemy hands every event, also after an
# invalidation has set the DBAPI connection to ``None``. It is kept in the record's own attribute
# dict (``record.__dict__``), never in ``record.info``, which belongs to the application (and is
# cleared on reconnect): the keys contain a dot, so they can never shadow an attribute; they
# survive invalidation and go with the record; one dict operation each, as with ``info``.
CHECKOUT = "pool_observer.checkout"  # (checkout time, request scope, pool id) while checked out
GC = "pool_observer.gc"  # rare states, popped by every return: see observer/pool/_handout.py
CLOSE_REASON = "pool_observer.close_reason"  # set by (soft_)invalidate, read by close
CONNECT_STARTED = "pool_observer.connect_started"  # set by do_connect, read by connect
IDLE_IN_OLD = "pool_observer.idle_in_old_pool"  # key of the replaced pool it went back to


Stamp = tuple[float, RequestScope | None, int]  # checkout time, request, key of the pool


class Reclaimed:
    """Mark of a connection record whose async checkout the garbage collector reclaimed: the
    finalizer detached it and is closing the connection, possibly awaiting inside a request's
    greenlet while another checkout takes the record (observer/pool/_handout.py)."""

    __slots__ = ("stamp",)

    def __init__(self, stamp: Stamp | None) -> None:
        self.stamp = stamp


# What the hot path adds to a per-thread list (observer/metrics/_batching.py) instead of calling
# prometheus-client for every event; added to the metrics on flush (before every scrape).
_CHECKOUTS = 0
_NONE_CHECKOUTS, _NONE_WAIT, _NONE_HOLD = 1, 2, 3  # work outside requests: route="none"
_WAIT = HistogramSlots(4, WAIT_BUCKETS)
_HOLD = HistogramSlots(_WAIT.end, HOLD_BUCKETS)
_WAIT_START, _WAIT_BOUNDS, _WAIT_SUM = _WAIT.start, _WAIT.bounds, _WAIT.sum
_HOLD_START, _HOLD_BOUNDS, _HOLD_SUM = _HOLD.start, _HOLD.bounds, _HOLD.sum
_SIZE = _HOLD.end


class PoolOtel(Protocol):
    """What a tracker reports to OpenTelemetry (observer/_otel.py): one pool's instruments, or
    span events only."""

    def waited(self, seconds: float, span_event: bool) -> None:
        """A checkout got a connection after ``seconds``."""

    def timed_out(self, seconds: float, span_event: bool) -> None:
        """A checkout gave up after ``seconds``."""

    def used(self, seconds: float, span_event: bool) -> None:
        """A connection came back after being held ``seconds``."""

    def created(self, seconds: float) -> None:
        """A new connection took ``seconds`` to open."""


class IdleSink(Protocol):
    """Where a checkout's end goes to count its time with no statement running
    (:class:`~observer.pool._idle.IdleWatch`)."""

    def returned(self, stamp: Stamp, now: float, live: bool) -> None:
        """The checkout ``stamp`` ended at ``now``."""

    def activity(self, stamp: Stamp, now: float) -> tuple[str, float]:
        """``("executing" | "idle", seconds)`` of the connection checked out as ``stamp``."""


class TrackerParts:
    """The attributes :class:`~observer.pool._tracker.PoolTracker` sets in its ``__init__``,
    declared once for the parts of it defined in other modules (one instance, no delegation:
    the hot path pays no extra attribute hop)."""

    engine_ref: weakref.ref[Engine]
    name: str
    held: dict[int, Stamp]
    otel: PoolOtel | None
    exemplars: bool
    span_events: bool
    _m: PoolMetrics
    _hooks: Hooks
    _routes: RouteMetrics
    _application_name: str | None
    _limiter: RateLimiter
    _slow_checkout: float
    _lock: threading.Lock
    _batched: bool
    _slot: Callable[[], list[float]]
    _by_thread: dict[int, list[float]]  # the ThreadSums' lists by thread (looked up inline)
    _idle_in_old: dict[int, int]
    _queue_pools: set[int]
    _reclaiming: weakref.WeakKeyDictionary[ConnectionPoolEntry, Reclaimed]
    _listens_to_reset: bool
    _checkin_failed: Callable[[Exception], None]
    _idle: IdleSink

    def state(self) -> PoolState:
        """The pool's numbers now (defined by the tracker)."""
        raise NotImplementedError

    def _returned(self, stamp: Stamp, now: float, live: bool = False) -> None:
        """A connection came back (defined by :class:`~observer.pool._acquire.Checkouts`)."""
        raise NotImplementedError
