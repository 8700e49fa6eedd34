"""The observer keeps nothing of its own in the application's dicts (``info``), restores an
engine exactly on ``unwatch()``, and holds watched engines weakly (issue #13 item 2)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from observer import Observer
from tests.helpers import hook_errors, sample

POOL = "pool"


@pytest.fixture
def make_sqlite(tmp_path: Path) -> Iterator[Callable[[], Engine]]:
    """Sync SQLite engines on a file with a real QueuePool, disposed after the test."""
    engines: list[Engine] = []

    def make() -> Engine:
        engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", poolclass=QueuePool)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


def checkouts(registry: CollectorRegistry) -> float | None:
    return sample(registry, "sqlalchemy_pool_checkouts_total", pool=POOL)


def test_user_listeners_and_info_see_only_the_users_keys(
    make_sqlite: Callable[[], Engine], make_observer: Callable[..., Observer]
) -> None:
    """Listeners added after watch() (do_connect, connect, checkout, checkin) and code reading
    ``connection.info`` while it is checked out see exactly the keys the application put there,
    through a first connect, a checkout, an invalidation and the reconnect that follows."""
    engine = make_sqlite()
    obs = make_observer()
    obs.watch(engine, name=POOL)
    seen: list[tuple[str, dict[str, Any]]] = []

    @event.listens_for(engine, "do_connect")
    def do_connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> None:
        seen.append(("do_connect", dict(record.info)))

    @event.listens_for(engine, "connect")
    def connect(dbapi_connection: Any, record: Any) -> None:
        seen.append(("connect", dict(record.info)))
        record.info["mine"] = 1

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        seen.append(("checkout", dict(record.info)))

    @event.listens_for(engine, "checkin")
    def checkin(dbapi_connection: Any, record: Any) -> None:
        seen.append(("checkin", dict(record.info)))

    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        seen.append(("in use", dict(conn.info)))
        conn.invalidate()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        seen.append(("in use", dict(conn.info)))

    assert seen == [
        ("do_connect", {}),
        ("connect", {}),
        ("checkout", {"mine": 1}),
        ("in use", {"mine": 1}),
        ("checkin", {"mine": 1}),
        ("do_connect", {}),  # SQLAlchemy clears info on the reconnect
        ("connect", {}),
        ("checkout", {"mine": 1}),
        ("in use", {"mine": 1}),
        ("checkin", {"mine": 1}),
    ]
    assert checkouts(obs.registry) == 2.0
    obs.flush()
    closed = "sqlalchemy_pool_connections_closed_total"
    assert sample(obs.registry, closed, pool=POOL, reason="invalidated") == 1.0
    assert sample(obs.registry, closed, pool=POOL, reason="closed") == 0.0
    assert hook_errors(obs.registry) == 0.0


def test_do_connect_with_a_bare_record_counts_no_hook_error(
    make_sqlite: Callable[[], Engine], make_observer: Callable[..., Observer]
) -> None:
    """A pool creator called with a stand-in record (SQLAlchemy's own tests call
    ``pool._creator(Mock())``) runs the observer's do_connect without an error to count."""
    engine = make_sqlite()
    obs = make_observer()
    obs.watch(engine, name=POOL)
    record = Mock()
    record.info = {}
    connection = engine.pool._creator(record)  # as SQLAlchemy's own tests do
    connection.close()
    assert record.info == {}
    assert hook_errors(obs.registry) == 0.0


def test_unwatch_during_a_checkout_leaves_info_as_the_user_made_it(
    make_sqlite: Callable[[], Engine], make_observer: Callable[..., Observer]
) -> None:
    """unwatch() while a connection is checked out: its info is exactly the user's, the pool's
    acquire and return steps are SQLAlchemy's again, and the later checkin neither raises nor
    counts; a fresh Observer then counts only its own checkout."""
    engine = make_sqlite()
    pool = engine.pool
    connect_before, return_before = pool.connect, pool._return_conn
    obs = make_observer()
    obs.watch(engine, name=POOL)
    conn = engine.connect()
    conn.info["mine"] = "kept"
    assert checkouts(obs.registry) == 1.0
    obs.unwatch(engine)
    assert dict(conn.info) == {"mine": "kept"}
    assert pool.connect == connect_before
    assert pool._return_conn == return_before
    conn.close()
    with engine.connect() as again:
        assert dict(again.info) == {"mine": "kept"}
    assert hook_errors(obs.registry) == 0.0
    assert obs.pool_names == []

    other = Observer(registry=CollectorRegistry())
    try:
        other.watch(engine, name=POOL)
        with engine.connect():
            pass
        assert checkouts(other.registry) == 1.0
        assert hook_errors(other.registry) == 0.0
    finally:
        other.close()


def test_close_during_a_checkout_leaves_info_as_the_user_made_it(
    make_sqlite: Callable[[], Engine],
) -> None:
    """close() with a connection out restores the pool too: info is the user's alone."""
    engine = make_sqlite()
    obs = Observer(registry=CollectorRegistry())
    obs.watch(engine, name=POOL)
    conn = engine.connect()
    conn.info["mine"] = 2
    obs.close()
    assert dict(conn.info) == {"mine": 2}
    conn.close()
    assert hook_errors(obs.registry) == 0.0


def test_a_dropped_watched_engine_is_freed(make_observer: Callable[..., Observer]) -> None:
    """The observer holds a watched engine weakly: dropping the app's last reference frees it,
    and the observer forgets its pool at the next flush."""
    obs = make_observer()
    engine = create_engine("sqlite://", poolclass=QueuePool)
    obs.watch(engine, name=POOL)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    gone = weakref.ref(engine)
    engine.dispose()
    del engine, conn
    gc.collect()
    assert gone() is None
    obs.flush()
    assert obs.pool_names == []
    assert hook_errors(obs.registry) == 0.0
