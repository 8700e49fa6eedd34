"""The one place observer reads or replaces SQLAlchemy's private names, an accessor per internal."""

from __future__ import annotations

import operator
import sys
import types
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import ConnectionPoolEntry, Pool, PoolProxiedConnection
from sqlalchemy.pool import base as pool_base

Acquire = Callable[[], PoolProxiedConnection]
Return = Callable[[ConnectionPoolEntry], None]

# Each accessor names the releases it was checked on: "read" means the source of every release
# tag from 2.0.38 (the oldest release observer supports) to 2.0.52 and 2.1.0b1 to 2.1.0b4; "run"
# means tests/compat/test_sqlalchemy_seam.py exercises it on the installed release (2.1.9 when
# written) and fails, naming the accessor, when a release removes or changes the internal. Each
# also says what observer does when the internal is missing: it degrades, never raises.

# A wrapper carries (owner, original) under this name, so unwrap() restores only its own.
_MARK = "__pool_observer__"


def _read(target: object, name: str, default: Any) -> Any:
    """``getattr`` that also survives a property that raises (a subclass, a future release)."""
    try:
        return getattr(target, name, default)
    except Exception:
        return default


# -- garbage collection --------------------------------------------------------------------------

# SQLAlchemy returns a checked-out connection that the garbage collector reclaims from
# pool/base.py ``_finalize_fairy``; for an async dialect it detaches the connection there (read:
# 2.0.2 on, so every supported release; run: 2.1.9). Seeing that function on the stack of a
# detach replaces a reset listener, which would cost every checkin about 1 us to catch a rare
# event. Resolved once, at import.
_FINALIZE_FAIRY = getattr(getattr(pool_base, "_finalize_fairy", None), "__code__", None)

GC_FINALIZER_FOUND = _FINALIZE_FAIRY is not None
"""Whether :func:`in_gc_finalizer` can answer. Fallback when False (a release without
``pool.base._finalize_fairy``): the tracker listens to ``reset`` on async engines too."""


def in_gc_finalizer() -> bool:
    """Whether the caller runs inside SQLAlchemy's ``pool.base._finalize_fairy`` (at most 16
    frames up). Read: 2.0.38-2.0.52, 2.1.0b1-b4; run: 2.1.9. Missing: always False (see
    :data:`GC_FINALIZER_FOUND`)."""
    frame = sys._getframe(1)
    for _ in range(16):
        if frame.f_code is _FINALIZE_FAIRY:
            return True
        back = frame.f_back
        if back is None:
            return False
        frame = back
    return False


def in_gc_cleanup() -> bool:
    """Whether the caller runs inside ``pool.base._finalize_fairy`` called for the garbage
    collector, not for an ordinary return, which runs the same function: its local
    ``is_gc_cleanup`` (an argument since 2.1, computed from ``ref`` in 2.0). Reads the frame's
    locals, so call it on rare paths only. Read: 2.0.38-2.0.52, 2.1.0b1-b4; run: 2.1.9.
    Missing: always False (a double handout through that finalizer is then not seen at the
    return; see observer/pool/_handout.py)."""
    frame = sys._getframe(1)
    for _ in range(16):
        if frame.f_code is _FINALIZE_FAIRY:
            return frame.f_locals.get("is_gc_cleanup") is True
        back = frame.f_back
        if back is None:
            return False
        frame = back
    return False


def _fairy_collected(record: ConnectionPoolEntry) -> bool:
    ref = getattr(record, "fairy_ref", None)
    return ref is not None and ref() is None


_NEEDS_GC = getattr(pool_base._ConnectionRecord, "needs_gc", None)

record_needs_gc: Callable[[ConnectionPoolEntry], bool] = (
    _NEEDS_GC.fget if isinstance(_NEEDS_GC, property) and _NEEDS_GC.fget else _fairy_collected
)
"""Whether a connection record's checkout was reclaimed by the garbage collector (its fairy is
gone while the record is still checked out): ``_ConnectionRecord.needs_gc``, a property of
newer releases (run: 2.1.9), resolved once, at import, to the property's getter (one call: it
runs in the reset listener of every sync checkin). Fallback where it is missing (read: 2.0.38's
pool/base.py; absent from 2.0.38-2.0.52 and 2.1.0b1-b4): the same test written out, the
record's public ``fairy_ref`` weakref set and dead. On 2.0 the garbage collector's weakref
callback calls ``_finalize_fairy(None, rec, pool, ref, ...)`` only while ``rec.fairy_ref is
ref``, and the reset event fires before ``rec.checkin()`` clears ``fairy_ref``; an ordinary
return runs with the fairy alive. Missing ``fairy_ref`` too: always False (a reclaimed sync
connection then counts as an ordinary return)."""

NEEDS_GC_FOUND = record_needs_gc is not _fairy_collected
"""Whether :data:`record_needs_gc` is SQLAlchemy's own property (True) or the fallback."""


def features_off() -> list[tuple[str, str]]:
    """(feature, why) for each feature the installed release turns off: the internals above
    that are missing. Empty on every supported release (docs/compatibility.md)."""
    off = []
    if not GC_FINALIZER_FOUND:
        off.append(
            (
                "double_handout_at_return",
                "pool.base._finalize_fairy is missing: a double handout is seen at the next "
                "checkout only; async reclaims are seen through the reset event",
            )
        )
    if not NEEDS_GC_FOUND and not hasattr(pool_base._ConnectionRecord, "fairy_ref"):
        off.append(
            (
                "sync_reclaimed",
                "neither _ConnectionRecord.needs_gc nor fairy_ref exists: a sync connection "
                "the garbage collector reclaims counts as an ordinary checkin",
            )
        )
    return off


# -- records and pools ---------------------------------------------------------------------------

state_of: Callable[[PoolProxiedConnection], dict[str, Any]] = operator.attrgetter(
    "_connection_record.__dict__"
)
"""The attribute dict of the connection record behind a checked-out connection: the private
slot ``_ConnectionFairy._connection_record``, then its ``__dict__`` (the record declares one in
its ``__slots__``), where the pool tracker keeps its per-connection state instead of the
application's ``info`` (observer/pool/_base.py). One C call, cheaper than the memoized
``connection.info`` it replaces. Read: 2.0.38-2.0.52, 2.1.0b1-b4; run: 2.1.9. Missing: raises
AttributeError, which the checkout hook catches and counts (``hook="checkout"``)."""


def pool_of_record(record: ConnectionPoolEntry) -> Pool | None:
    """The pool a connection record belongs to: the private slot ``_ConnectionRecord.__pool``
    (stored as ``_ConnectionRecord__pool``). Read: 2.0.38-2.0.52, 2.1.0b1-b4; run: 2.1.9.
    Missing: None, and pools are no longer found by the live-pools count."""
    pool = getattr(record, "_ConnectionRecord__pool", None)
    return pool if isinstance(pool, Pool) else None


def pool_dialect(pool: Pool) -> Any:
    """The dialect a pool was created for (``Pool._dialect``, shared by the pools an engine's
    ``dispose()`` swaps in). Read: 2.0.38-2.0.52, 2.1.0b1-b4; run: 2.1.9. Missing: None, so a
    disposed pool is forgotten by the live-pools count only when it is garbage-collected."""
    return _read(pool, "_dialect", None)


def static_pool_record(pool: Pool) -> ConnectionPoolEntry | None:
    """StaticPool's one connection record if it was created, without creating it: the value
    the memoized property ``StaticPool.connection`` caches in the instance dict. Read:
    2.0.38-2.0.52, 2.1.0b1-b4; run: 2.1.9. Missing: None (the pool reads as not connected)."""
    record = pool.__dict__.get("connection")
    return record if isinstance(record, ConnectionPoolEntry) else None


def max_overflow(pool: Pool) -> int | None:
    """``QueuePool._max_overflow`` (-1: unbounded; ``pool_size=0`` also sets -1). Read:
    2.0.38-2.0.52, 2.1.0b1-b4; run: 2.1.9. Missing (or not a QueuePool): None; the callers
    then use 0."""
    value = _read(pool, "_max_overflow", None)
    return value if isinstance(value, int) else None


def pool_recycle(pool: Pool) -> float | None:
    """``Pool._recycle`` in seconds, None when off (SQLAlchemy keeps -1). Read: 2.0.38-2.0.52,
    2.1.0b1-b4; run: 2.1.9. Missing or unreadable: None (reported as off)."""
    value = _read(pool, "_recycle", -1)
    return float(value) if isinstance(value, int | float) and value > 0 else None


def pool_timeout(pool: Pool) -> float | None:
    """``QueuePool._timeout``: seconds a checkout waits for a connection. Read: 2.0.38-2.0.52,
    2.1.0b1-b4; run: 2.1.9. Missing (NullPool, StaticPool have none) or unreadable: None."""
    value = _read(pool, "_timeout", None)
    return float(value) if isinstance(value, int | float) and value > 0 else None


def pool_pre_ping(pool: Pool) -> bool:
    """``Pool._pre_ping``. Read: 2.0.38-2.0.52, 2.1.0b1-b4; run: 2.1.9. Missing or unreadable:
    False (reported as off)."""
    return bool(_read(pool, "_pre_ping", False))


# -- listening without the execution-event flag --------------------------------------------------


def listen_keeping_execution_flag(target: Any, identifier: str, fn: Callable[..., Any]) -> None:
    """``event.listen`` that puts ``_has_events`` back as it was on ``target`` (an ``Engine`` or
    the ``Engine`` class): any connection-event listener sets it, and then every statement goes
    through the execution-event dispatch (+13-20 us a statement, bench/README.md). For events
    SQLAlchemy dispatches whatever the flag says (``engine_disposed``, the pool events), or that
    may go unheard without it (``handle_error``: see ``PoolTracker.attach``). Read:
    2.0.38-2.0.52, 2.1.0b1-b4 (class attribute ``Engine._has_events``, set by
    ``ConnectionEvents._listen``); run: 2.1.9. Missing (renamed): the listener is added and the
    new flag stays set: statements get slower, nothing breaks."""
    before = target.__dict__.get("_has_events", None)
    event.listen(target, identifier, fn)
    if before is not None:
        target._has_events = before
    elif not isinstance(target, type):
        target.__dict__.pop("_has_events", None)  # back to the class's value


# -- the acquire and return seams ----------------------------------------------------------------


def can_wrap_return(pool: Pool) -> bool:
    """Whether the pool has ``Pool._return_conn``, which every checkin calls right after
    dispatching the checkin event (wrapping it is 0.3-0.8 us a cycle cheaper than a checkin
    listener, bench/README.md). Read: 2.0.38-2.0.52, 2.1.0b1-b4; run: 2.1.9. Missing: False,
    and the tracker listens to ``checkin`` instead."""
    return callable(getattr(pool, "_return_conn", None))


# SQLAlchemy attributes its warnings (util.warn -> langhelpers._warnings_warn) to the first
# frame whose module ``__name__`` does not start with ``sqlalchemy.``: a warning raised inside
# the pool (a double checkin, a failed reset) would name our wrapper instead of the app line
# that asked for the connection. The wrappers are therefore given globals whose ``__name__``
# marks them as part of the pool, so SQLAlchemy skips them as it skips its own frames (read:
# 2.0.38-2.0.52, 2.1.0b1-b4; run: 2.1.9, pinned in tests/compat/test_sqlalchemy_seam.py).
# Tracebacks still show the wrapper's real file and line. Missing: the warning names the wrapper.
SKIPPED_BY_WARNINGS = "sqlalchemy.pool.observer_wrapper"


def _skipped_by_warnings(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its frames skipped by SQLAlchemy's warning attribution (no cost per call: the
    same code and closure, module globals copied once under another ``__name__``)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return fn
    marked = {**fn.__globals__, "__name__": SKIPPED_BY_WARNINGS}
    copy = types.FunctionType(code, marked, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__
    return copy


def wrap_acquire(pool: Pool, owner: object, make: Callable[[Acquire], Acquire]) -> None:
    """Replace ``pool.connect`` (what ``Engine.raw_connection`` calls: SQLAlchemy has no
    "checkout started" event, and a checkout that times out fires none) on this pool instance
    with ``make(original)``. Public method, replaced on the instance; read: 2.0.38-2.0.52,
    2.1.0b1-b4; run: 2.1.9."""
    original = pool.connect
    wrapper: Acquire = _skipped_by_warnings(make(original))
    setattr(wrapper, _MARK, (owner, original))
    pool.connect = wrapper  # type: ignore[method-assign]


def wrap_return(pool: Pool, owner: object, make: Callable[[Return], Return]) -> None:
    """Replace ``pool._return_conn`` on this pool instance with ``make(original)``; only when
    :func:`can_wrap_return` said so. Read: 2.0.38-2.0.52, 2.1.0b1-b4; run: 2.1.9."""
    original: Return = pool._return_conn
    wrapper: Return = _skipped_by_warnings(make(original))
    setattr(wrapper, _MARK, (owner, original))
    pool._return_conn = wrapper  # type: ignore[method-assign,assignment]


def unwrap(pool: Pool, owner: object) -> None:
    """Undo :func:`wrap_acquire` and :func:`wrap_return` by ``owner`` on ``pool`` (a wrapper
    someone else put on top of ours is left alone)."""
    for name in ("connect", "_return_conn"):
        wrapper = pool.__dict__.get(name)
        marker = getattr(wrapper, _MARK, None)
        if marker is None or marker[0] is not owner:
            continue
        original = marker[1]
        if getattr(original, "__self__", None) is pool:
            delattr(pool, name)  # back to the class's method
        else:
            setattr(pool, name, original)


# -- statement boundaries: the dialect's execute, commit and rollback steps ----------------------

# The dialect steps every statement (and every COMMIT / ROLLBACK, the pool's reset included)
# goes through on its way to the driver: ``Connection._exec_single_context``,
# ``_exec_insertmany_context`` and ``_cursor_execute`` call ``self.dialect.do_execute`` (or
# ``do_execute_no_params``, ``do_executemany``) with the execution context; ``_commit_impl``,
# ``_rollback_impl`` and ``_ConnectionFairy._reset`` call ``do_commit`` / ``do_rollback`` with the
# pool's connection. Public methods of the dialect, replaced on the dialect instance of one engine
# (which its pool shares as ``Pool._dialect``): unlike a ``do_execute`` *event*, which sets
# ``dialect._has_events`` and sends every statement through the dispatch, a replaced method
# costs one call. Read: 2.0.38 and 2.1.9 (the same call sites); run: 2.1.9 and 2.0.38
# (tests/compat/test_sqlalchemy_seam.py, also under scripts/matrix floors) and SQLAlchemy's own
# suite on 2.1.9 (scripts/sqla-suite, SQLite and PostgreSQL). Missing (a dialect without one):
# that step is left alone and its time counts as idle.
STATEMENT_STEPS = ("do_execute", "do_execute_no_params", "do_executemany")
CONNECTION_STEPS = ("do_commit", "do_rollback")

context_state: Callable[[Any], dict[str, Any]] = operator.attrgetter(
    "_dbapi_connection._connection_record.__dict__"
)
"""The attribute dict of the connection record an execution context runs on: the private
``DefaultExecutionContext._dbapi_connection`` (the pool's proxied connection, set by every
``_init_*`` of the context), then :data:`state_of`'s path. One C call. Read: 2.0.38, 2.1.9;
run: 2.0.38, 2.1.9. Missing: AttributeError, and the statement is not measured."""


def wrap_dialect(dialect: Any, owner: object, make: Callable[[str, Any], Any]) -> list[str]:
    """Replace each of :data:`STATEMENT_STEPS` and :data:`CONNECTION_STEPS` the dialect has with
    ``make(name, original)`` on this dialect instance; the names replaced."""
    replaced = []
    for name in (*STATEMENT_STEPS, *CONNECTION_STEPS):
        original = getattr(dialect, name, None)
        if not callable(original):
            continue
        wrapper = _skipped_by_warnings(make(name, original))
        setattr(wrapper, _MARK, (owner, original))
        setattr(dialect, name, wrapper)
        replaced.append(name)
    return replaced


def unwrap_dialect(dialect: Any, owner: object) -> None:
    """Undo :func:`wrap_dialect` by ``owner``: the dialect's methods are the class's again (or
    what was on the instance before); a wrapper someone else put on top of ours stays."""
    for name in (*STATEMENT_STEPS, *CONNECTION_STEPS):
        wrapper = dialect.__dict__.get(name)
        marker = getattr(wrapper, _MARK, None)
        if marker is None or marker[0] is not owner:
            continue
        original = marker[1]
        if getattr(original, "__self__", None) is dialect:
            delattr(dialect, name)  # back to the class's method
        else:
            setattr(dialect, name, original)
