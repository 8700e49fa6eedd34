"""Each accessor of observer/_compat/sqlalchemy.py pinned on a real pool of the installed
SQLAlchemy: a release that removes or changes an internal fails here, naming the accessor."""

from __future__ import annotations

import gc
import inspect
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from packaging.version import Version
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, Pool, QueuePool, StaticPool

from observer._compat import sqlalchemy as seam

RELEASE = f"SQLAlchemy {sqlalchemy.__version__}"


def broken(accessor: str, what: str) -> str:
    """The failure message: which accessor, which release, what changed."""
    return f"observer._compat.sqlalchemy.{accessor} on {RELEASE}: {what}"


@pytest.fixture
def make_sqlite(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """Sync SQLite engines on a file (a real QueuePool unless told otherwise), disposed after."""
    engines: list[Engine] = []

    def make(**kwargs: Any) -> Engine:
        kwargs.setdefault("poolclass", QueuePool)
        engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


def records_of(engine: Engine) -> list[ConnectionPoolEntry]:
    """The connection records the engine's pool creates from now on (public connect event)."""
    records: list[ConnectionPoolEntry] = []
    event.listen(engine, "connect", lambda dbapi, record: records.append(record))
    return records


def test_pool_of_record_finds_the_pool_of_a_connection_record(make_sqlite: Any) -> None:
    """pool_of_record reads the record's private pool slot: LivePools counts pools with it."""
    engine = make_sqlite()
    records = records_of(engine)
    with engine.connect():
        pass
    assert len(records) == 1
    assert seam.pool_of_record(records[0]) is engine.pool, broken(
        "pool_of_record", "_ConnectionRecord__pool no longer holds the record's pool"
    )


def test_state_of_is_the_attribute_dict_of_the_checked_out_record(make_sqlite: Any) -> None:
    """state_of reads the fairy's private record slot: the pool tracker keeps its
    per-connection state in that record's own __dict__, apart from the user's info."""
    engine = make_sqlite()
    records = records_of(engine)
    connection = engine.pool.connect()
    try:
        state = seam.state_of(connection)
        assert len(records) == 1
        assert state is vars(records[0]), broken(
            "state_of", "_ConnectionFairy._connection_record no longer holds the record"
        )
        assert state is not connection.info
    finally:
        connection.close()


def test_pool_dialect_is_the_engines_dialect_before_and_after_dispose(make_sqlite: Any) -> None:
    """pool_dialect reads Pool._dialect: the pools dispose() swaps in share the engine's."""
    engine = make_sqlite()
    first = engine.pool
    engine.dispose()
    assert engine.pool is not first
    assert seam.pool_dialect(first) is engine.dialect, broken(
        "pool_dialect", "Pool._dialect is not the engine's dialect"
    )
    assert seam.pool_dialect(engine.pool) is engine.dialect, broken(
        "pool_dialect", "the pool dispose() created does not keep the engine's dialect"
    )


def test_static_pool_record_is_the_one_record_once_connected(make_sqlite: Any) -> None:
    """static_pool_record reads StaticPool's memoized record without creating it."""
    engine = make_sqlite(poolclass=StaticPool)
    records = records_of(engine)
    assert seam.static_pool_record(engine.pool) is None, broken(
        "static_pool_record", "a record exists before the first checkout"
    )
    with engine.connect():
        pass
    record = seam.static_pool_record(engine.pool)
    assert len(records) == 1
    assert record is records[0], broken(
        "static_pool_record", "StaticPool no longer caches its record in the instance dict"
    )
    assert record.dbapi_connection is not None
    assert seam.static_pool_record(make_sqlite().pool) is None  # a QueuePool has no such record


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"pool_size": 3, "max_overflow": 7}, 7),
        ({"pool_size": 3, "max_overflow": -1}, -1),
        ({"pool_size": 0, "max_overflow": 7}, -1),  # SQLAlchemy: pool_size=0 means unbounded
        ({"poolclass": NullPool}, None),
    ],
)
def test_max_overflow_is_the_queue_pools_setting(
    make_sqlite: Any, kwargs: dict[str, Any], expected: int | None
) -> None:
    """max_overflow reads QueuePool._max_overflow (None for a pool that has none)."""
    engine = make_sqlite(**kwargs)
    assert seam.max_overflow(engine.pool) == expected, broken(
        "max_overflow", f"QueuePool._max_overflow is not {expected} for {kwargs}"
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"pool_recycle": 600, "pool_timeout": 4, "pool_pre_ping": True}, (600.0, 4.0, True)),
        ({}, (None, 30.0, False)),  # SQLAlchemy's defaults: never recycle, wait 30 s
        ({"poolclass": NullPool, "pool_recycle": 60}, (60.0, None, False)),
    ],
)
def test_recycle_timeout_and_pre_ping_are_the_pools_settings(
    make_sqlite: Any, kwargs: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    """pool_recycle, pool_timeout and pool_pre_ping read Pool._recycle, QueuePool._timeout and
    Pool._pre_ping."""
    pool = make_sqlite(**kwargs).pool
    got = (seam.pool_recycle(pool), seam.pool_timeout(pool), seam.pool_pre_ping(pool))
    assert got == expected, broken(
        "pool_recycle/pool_timeout/pool_pre_ping", f"{kwargs} read as {got}, not {expected}"
    )


def test_a_plain_listen_sets_the_execution_flag_and_the_accessor_puts_it_back(
    make_sqlite: Any,
) -> None:
    """Listening to engine_disposed sets Engine._has_events (the reason for the accessor);
    listen_keeping_execution_flag puts it back, on an engine and on the Engine class, and the
    listener still fires."""
    plain = make_sqlite()
    event.listen(plain, "engine_disposed", lambda engine: None)
    assert plain._has_events is True, broken(
        "listen_keeping_execution_flag",
        "listening no longer sets Engine._has_events: the flag may have been renamed",
    )
    engine = make_sqlite()
    disposed: list[object] = []

    def on_instance(target: Engine) -> None:
        disposed.append(("instance", target))

    def on_class(target: Engine) -> None:
        disposed.append(("class", target))

    class_flag = Engine.__dict__["_has_events"]
    seam.listen_keeping_execution_flag(engine, "engine_disposed", on_instance)
    seam.listen_keeping_execution_flag(Engine, "engine_disposed", on_class)
    try:
        flags = (engine._has_events, Engine._has_events, "_has_events" in engine.__dict__)
        assert flags == (False, False, False), broken(
            "listen_keeping_execution_flag", f"flags after listening: {flags}"
        )
        engine.dispose()
        assert disposed == [("class", engine), ("instance", engine)]
    finally:
        event.remove(Engine, "engine_disposed", on_class)
        Engine._has_events = class_flag  # a failure here must not slow every later test


def test_the_acquire_and_return_seams_see_every_checkout_and_return(make_sqlite: Any) -> None:
    """wrap_acquire wraps what a checkout calls; wrap_return what a checkin calls right after
    the checkin event; unwrap undoes both and leaves another owner's wrapper alone."""
    engine = make_sqlite()
    pool = engine.pool
    seen: list[str] = []
    event.listen(engine, "checkin", lambda dbapi, record: seen.append("checkin event"))
    assert seam.can_wrap_return(pool) is True, broken("can_wrap_return", "no Pool._return_conn")

    def make_acquire(original: seam.Acquire) -> seam.Acquire:
        def acquire() -> Any:
            seen.append("acquire")
            return original()

        return acquire

    def make_return(original: seam.Return) -> seam.Return:
        def give_back(record: ConnectionPoolEntry) -> None:
            seen.append("return")
            original(record)

        return give_back

    owner, other = object(), object()
    seam.wrap_acquire(pool, owner, make_acquire)
    seam.wrap_return(pool, owner, make_return)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert seen == ["acquire", "checkin event", "return"], broken(
        "wrap_acquire/wrap_return", f"a checkout and its checkin went {seen}"
    )
    seam.unwrap(pool, other)  # not its wrappers: nothing happens
    with engine.connect():
        pass
    assert seen[3:] == ["acquire", "checkin event", "return"]
    seam.unwrap(pool, owner)
    with engine.connect():
        pass
    assert seen[6:] == ["checkin event"], broken("unwrap", f"after unwrap: {seen[6:]}")
    assert pool.checkedin() == 1


def test_unwrap_keeps_a_wrapper_someone_else_added_on_top(make_sqlite: Any) -> None:
    """A wrapper put over ours is not replaced by unwrap (it would drop the other one)."""
    engine = make_sqlite()
    pool = engine.pool
    owner = object()

    def make_acquire(original: seam.Acquire) -> seam.Acquire:
        def acquire() -> Any:
            return original()

        return acquire

    seam.wrap_acquire(pool, owner, make_acquire)
    ours = pool.connect

    def theirs() -> Any:
        return ours()

    pool.connect = theirs  # type: ignore[method-assign]
    seam.unwrap(pool, owner)
    assert pool.connect is theirs


def test_record_needs_gc_is_the_records_property_where_it_exists() -> None:
    """record_needs_gc is _ConnectionRecord.needs_gc's getter on releases that have it (2.1.9
    when written), and the fairy_ref fallback before (2.0.x)."""
    prop = getattr(sqlalchemy.pool.base._ConnectionRecord, "needs_gc", None)
    if Version(sqlalchemy.__version__) >= Version("2.1.9"):
        assert isinstance(prop, property), broken(
            "record_needs_gc", "_ConnectionRecord.needs_gc is gone or no longer a property"
        )
        assert seam.NEEDS_GC_FOUND is True, broken("record_needs_gc", "not resolved to needs_gc")
        assert seam.record_needs_gc is prop.fget
    else:
        assert seam.NEEDS_GC_FOUND is False, broken("record_needs_gc", "not the fallback")


def test_record_needs_gc_tells_a_reclaimed_checkout_from_a_returned_one(make_sqlite: Any) -> None:
    """In the reset event of a sync connection, record_needs_gc is True only when the garbage
    collector reclaims a checkout nobody returned: with needs_gc, and with the fallback that
    reads fairy_ref (2.0.x; run here on the installed release too)."""
    engine = make_sqlite()
    resets: list[bool] = []

    def on_reset(dbapi: Any, record: ConnectionPoolEntry | None, state: Any) -> None:
        assert record is not None
        resets.append(seam.record_needs_gc(record))

    fallback: list[bool] = []

    def on_reset_fallback(dbapi: Any, record: ConnectionPoolEntry | None, state: Any) -> None:
        assert record is not None
        fallback.append(seam._fairy_collected(record))

    event.listen(engine, "reset", on_reset)
    event.listen(engine, "reset", on_reset_fallback)
    with engine.connect():
        pass
    raw = engine.raw_connection()
    del raw
    gc.collect()
    assert fallback == [False, True], broken(
        "record_needs_gc", f"the fairy_ref fallback saw {fallback}"
    )
    assert resets == [False, True], broken(
        "record_needs_gc", f"reset saw {resets} for a return then a garbage-collected checkout"
    )


def test_in_gc_cleanup_tells_the_garbage_collectors_return_from_an_ordinary_one() -> None:
    """An ordinary return and the garbage collector's both run pool.base._finalize_fairy; only
    the second has is_gc_cleanup set, which in_gc_cleanup reads from the frame (a sync engine
    returns a reclaimed connection through checkin)."""
    engine = create_engine("sqlite://", poolclass=QueuePool)
    returns: list[bool] = []

    def on_checkin(dbapi: Any, record: ConnectionPoolEntry) -> None:
        returns.append(seam.in_gc_cleanup())

    event.listen(engine, "checkin", on_checkin)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        leaked = engine.connect()
        cycle: list[Any] = [leaked]
        cycle.append(cycle)
        del leaked, cycle
        gc.collect()
    finally:
        engine.dispose()
    assert returns == [False, True], broken(
        "in_gc_cleanup", f"checkins saw {returns} (ordinary return, then garbage collector)"
    )


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_in_gc_finalizer_is_true_only_in_the_garbage_collectors_detach(
    make_engine: Any,
) -> None:
    """An async connection the garbage collector reclaims is detached from inside
    pool.base._finalize_fairy, which in_gc_finalizer finds on the stack; a detach by the app
    is not."""
    assert seam.GC_FINALIZER_FOUND is True, broken(
        "in_gc_finalizer", "pool.base._finalize_fairy is gone"
    )
    engine = make_engine(pool_size=2, max_overflow=0)
    detaches: list[bool] = []

    def on_detach(dbapi: Any, record: ConnectionPoolEntry) -> None:
        detaches.append(seam.in_gc_finalizer())

    event.listen(engine.sync_engine, "detach", on_detach)
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        raw.detach()  # the app's own detach
    conn = await engine.connect()
    await conn.execute(text("SELECT 1"))
    del conn
    gc.collect()
    assert detaches == [False, True], broken(
        "in_gc_finalizer", f"detach events saw {detaches} (app detach, then garbage collector)"
    )


def test_the_accessors_fall_back_on_a_pool_without_the_internals() -> None:
    """On a pool class that lacks the internals (a future release), each accessor returns its
    documented fallback instead of raising."""

    class Bare(Pool):
        def __init__(self) -> None:  # no Pool.__init__: none of its private attributes
            pass

        @property
        def _pre_ping(self) -> bool:  # private attributes that raise
            raise RuntimeError("gone")

        @property
        def _dialect(self) -> Any:  # Pool has a class-level default: make it unreadable
            raise RuntimeError("gone")

    pool = Bare()
    got = (
        seam.pool_dialect(pool),
        seam.max_overflow(pool),
        seam.pool_recycle(pool),
        seam.pool_timeout(pool),
        seam.pool_pre_ping(pool),
        seam.static_pool_record(pool),
    )
    assert got == (None, None, None, None, False, None)
    assert seam.pool_of_record(object()) is None  # type: ignore[arg-type]


def _as_sqlalchemy_code(fn: Callable[..., None]) -> Callable[..., None]:
    """``fn`` as if it were SQLAlchemy's own code (its module ``__name__``), so that SQLAlchemy's
    warning attribution skips it, as it skips the pool code that warns on a double checkin."""
    marked = {**fn.__globals__, "__name__": "sqlalchemy.pool.events_for_the_test"}
    return types.FunctionType(fn.__code__, marked, fn.__name__, fn.__defaults__, fn.__closure__)


def test_a_warning_raised_inside_the_pool_names_the_apps_line_not_the_observers(
    make_sqlite: Any, make_observer: Any
) -> None:
    """SQLAlchemy attributes its warnings to the first frame outside SQLAlchemy: with the
    acquire and return wrappers in the way, a warning raised inside the pool on a checkout or a
    checkin (as a double checkin or a failed reset would be) names the app's line, as without
    the observer, never observer/pool/ or observer/_compat/."""
    engine = make_sqlite()

    def on_checkout(*args: Any) -> None:
        sqlalchemy.util.warn("inside the checkout")

    def on_checkin(*args: Any) -> None:
        sqlalchemy.util.warn("inside the checkin")

    event.listen(engine, "checkout", _as_sqlalchemy_code(on_checkout))
    event.listen(engine, "checkin", _as_sqlalchemy_code(on_checkin))
    make_observer().watch(engine)
    here = inspect.currentframe()
    assert here is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", sqlalchemy.exc.SAWarning)
        conn, connect_line = engine.connect(), here.f_lineno
        conn.close(), (close_line := here.f_lineno)
    where = [(Path(w.filename).name, w.lineno, str(w.message)) for w in caught]
    assert where == [
        ("test_sqlalchemy_seam.py", connect_line, "inside the checkout"),
        ("test_sqlalchemy_seam.py", close_line, "inside the checkin"),
    ], broken("SKIPPED_BY_WARNINGS", f"warnings attributed to {where}")


def test_no_feature_is_off_on_the_installed_release() -> None:
    """Every internal the observer needs exists on the installed (supported) release."""
    assert seam.features_off() == [], broken("features_off", "a feature is off")


def test_a_feature_off_is_logged_once_with_the_release(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a release turns a feature off, the first watch logs observer.feature_off once,
    naming the feature, the release and why."""
    from structlog.testing import capture_logs

    from observer.pool import _tracker

    monkeypatch.setattr(_tracker, "features_off", lambda: [("sync_reclaimed", "no fairy_ref")])
    monkeypatch.setattr(_tracker, "_features_told", [])
    with capture_logs() as logs:
        _tracker.tell_features_off()
        _tracker.tell_features_off()
    assert [e for e in logs if e["event"] == "observer.feature_off"] == [
        {
            "event": "observer.feature_off",
            "log_level": "warning",
            "feature": "sync_reclaimed",
            "release": f"SQLAlchemy {sqlalchemy.__version__}",
            "why": "no fairy_ref",
            "route": None,
            "request_id": None,
        }
    ]


def test_the_dialect_steps_see_every_statement_commit_and_rollback_with_their_record(
    make_sqlite: Any,
) -> None:
    """wrap_dialect replaces the dialect's execute, executemany, no-params, commit and rollback
    steps on the instance; each sees its connection record (context_state through the
    execution context, state_of through the pool's connection, also in the pool's reset);
    unwrap_dialect leaves the instance as it was, and a wrapper stacked on ours stays."""
    engine = make_sqlite()
    dialect = engine.dialect
    seen: list[tuple[str, int]] = []
    owner = object()

    def make(name: str, original: Any) -> Any:
        def step(*args: Any, **kwargs: Any) -> Any:
            if name in seam.CONNECTION_STEPS:
                info = seam.state_of(args[0])
            else:
                info = seam.context_state(args[-1])
            seen.append((name, id(info)))
            return original(*args, **kwargs)

        return step

    records = records_of(engine)
    with engine.connect():  # the first connect's own steps happen before
        pass
    replaced = seam.wrap_dialect(dialect, owner, make)
    assert replaced == [*seam.STATEMENT_STEPS, *seam.CONNECTION_STEPS], broken(
        "wrap_dialect", f"the dialect lacks a step ({replaced})"
    )
    with engine.connect() as conn:
        conn.execution_options(no_parameters=True).exec_driver_sql("CREATE TABLE t (x INTEGER)")
        conn.execute(text("INSERT INTO t (x) VALUES (:x)"), [{"x": 1}, {"x": 2}])
        conn.commit()
        conn.execute(text("SELECT x FROM t WHERE x > :x"), {"x": 0})
        conn.rollback()
    (record,) = records
    names = [name for name, info in seen if info == id(record.__dict__)]
    assert names == [
        "do_execute_no_params",
        "do_executemany",
        "do_commit",
        "do_execute",
        "do_rollback",
        "do_rollback",  # the pool's reset on return
    ], broken("context_state/state_of", f"steps seen {seen}")
    seam.unwrap_dialect(dialect, owner)
    assert not set(seam.STATEMENT_STEPS + seam.CONNECTION_STEPS) & set(vars(dialect))
    seam.wrap_dialect(dialect, owner, make)
    on_top = dialect.do_execute
    other = lambda *args: on_top(*args)  # noqa: E731 (someone else's wrapper)
    dialect.do_execute = other
    seam.unwrap_dialect(dialect, owner)
    assert dialect.__dict__["do_execute"] is other
    assert "do_commit" not in dialect.__dict__


def test_context_state_fails_plainly_without_an_execution_context() -> None:
    """A step called without a context (a dialect's own call) raises AttributeError, which the
    idle watch takes as "not measured"."""
    with pytest.raises(AttributeError):
        seam.context_state(None)
