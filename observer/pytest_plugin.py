"""A pytest plugin for your test suite: a test that leaves an ORM session open or a connection
checked out fails, with where the session was opened. It sees every engine and session of the
test process, also those your tests' ``conftest.py`` builds itself (its own engine and session
factory) that no :class:`~observer.Observer` watches.

Opt in for every test with ``pytest -p observer.pytest_plugin`` (or ``pytest_plugins =
["observer.pytest_plugin"]`` in your top ``conftest.py``); let one test leak on purpose with
``@pytest.mark.observer_allow_leaks``. Or, without the plugin, import the fixture in a
``conftest.py`` (``from observer.pytest_plugin import observer_leak_guard``) and request it
where you want the check (``observer_leak_guard.check()`` also checks in the middle of a test).

The check runs after the test's own fixtures are torn down (a session a fixture closes is not a
leak), after a garbage collection (a session dropped unclosed is a leak too), and only counts
what the test body opened: sessions and connections open when it started (fixtures included)
are left alone.
"""

from __future__ import annotations

import gc
import math
import weakref
from collections.abc import Generator, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import ConnectionPoolEntry, Pool

from observer._compat.sqlalchemy import in_gc_finalizer, pool_of_record, record_needs_gc
from observer._hooks import Hooks
from observer._logs import RateLimiter
from observer._observer import default_pool_name, live_observers
from observer.attribution._route_metrics import RouteMetrics
from observer.metrics._families import Metrics
from observer.sessions._tracker import OpenSession, SessionTracker

MARK = "observer_allow_leaks"
HINT = (
    "close each session ('async with Session() as session:' or 'with Session() as session:') "
    "and each connection; or mark the test @pytest.mark.observer_allow_leaks"
)


class LeakFound(AssertionError):
    """A test left sessions open or connections checked out; the message lists each one."""


class _EverySession(SessionTracker):
    """The session tracker of the guard: every session, whatever its engine; it only keeps
    what it sees (no metrics, no log lines: the app's own observer reports those)."""

    every_engine = True

    def report(self, record: OpenSession, reason: str, now: float | None = None) -> None:
        record.reported = reason

    def _resolved(self, record: OpenSession, how: str, now: float) -> None:
        pass


class ProcessWatch:
    """Every session and every pool's checked-out connections in this process, seen through
    class-level listeners (``Session`` and ``Pool``), so engines no observer watches count."""

    def __init__(self) -> None:
        metrics = Metrics(CollectorRegistry(), multiprocess=False)
        self.hooks = Hooks(metrics.hook_errors)
        self.sessions = _EverySession(
            metrics,
            self.hooks,
            RouteMetrics(metrics, max_routes=1),
            leak_threshold=math.inf,
            capture_origin=True,
            limiter=RateLimiter(),
        )
        self.out: dict[int, tuple[ConnectionPoolEntry, str]] = {}  # id(record) -> (it, pool)
        self.reclaimed: dict[str, int] = {}  # pool -> connections the GC reclaimed
        self._names: weakref.WeakKeyDictionary[Pool, str] = weakref.WeakKeyDictionary()
        g = self.hooks.guard
        self._listeners = (
            ("checkout", g("guard_checkout", self._checkout)),
            ("checkin", g("guard_checkin", self._returned)),
            ("reset", g("guard_reset", self._reset)),
            ("detach", g("guard_detach", self._detached)),
        )

    def attach(self) -> None:
        for identifier, fn in self._listeners:
            event.listen(Pool, identifier, fn)
        self.sessions.listen()

    def detach(self) -> None:
        for identifier, fn in self._listeners:
            if event.contains(Pool, identifier, fn):
                event.remove(Pool, identifier, fn)
        self.sessions.detach()

    def _checkout(self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        pool = pool_of_record(record)
        if pool is not None:
            name = self._names.get(pool)
            if name is None:  # named once per pool, at its first checkout
                name = self._names[pool] = _pool_name(pool)
            self.out[id(record)] = (record, name)

    def _returned(self, dbapi_connection: Any, record: ConnectionPoolEntry | None) -> None:
        if record is not None:
            self.out.pop(id(record), None)

    # The garbage collector returns a connection nobody returned from inside SQLAlchemy's
    # finalizer (dict operations only here): a sync one through reset (then checkin), an
    # async one through reset or detach. The same tests as the pool tracker's (pool/_events.py).
    def _reset(self, dbapi_connection: Any, record: ConnectionPoolEntry | None, state: Any) -> None:
        if record is not None and (not state.asyncio_safe or record_needs_gc(record)):
            self._lost(record)

    def _detached(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if id(record) in self.out and in_gc_finalizer():
            self._lost(record)
        self.out.pop(id(record), None)

    def _lost(self, record: ConnectionPoolEntry) -> None:
        held = self.out.pop(id(record), None)
        if held is not None:
            self.reclaimed[held[1]] = self.reclaimed.get(held[1], 0) + 1

    def checked_out(self) -> dict[str, int]:
        """Pool -> connections checked out of it now."""
        counts: dict[str, int] = {}
        for _, pool in list(self.out.values()):
            counts[pool] = counts.get(pool, 0) + 1
        return counts


_watch: ProcessWatch | None = None


def process_watch() -> ProcessWatch:
    """The process's watch, started on first use (the plugin starts it when pytest starts)."""
    global _watch
    if _watch is None:
        _watch = ProcessWatch()
        _watch.attach()
    return _watch


class LeakGuard:
    """What was open when a test started, and what the test left behind."""

    def __init__(self) -> None:
        self._watch = process_watch()
        self._open: dict[int, OpenSession] = {}  # held, so their ids cannot be reused
        self._collected: dict[str, int] = {}
        self._out: dict[str, int] = {}
        self._reclaimed: dict[str, int] = {}
        self.start()

    def start(self) -> None:
        """Take the baseline now (done when the guard is created)."""
        watch = self._watch
        watch.hooks.drain()
        self._open = {id(record): record for record in list(watch.sessions.open.values())}
        self._collected = dict(watch.sessions.collected_origins)
        self._out = watch.checked_out()
        self._reclaimed = dict(watch.reclaimed)

    def problems(self) -> list[str]:
        """One line per session or connection the test left behind (after a collection)."""
        gc.collect()
        watch = self._watch
        watch.hooks.drain()  # the sessions the collection dropped (deferred out of finalizers)
        lines: list[str] = []
        for record in sorted(list(watch.sessions.open.values()), key=lambda r: r.started):
            if id(record) not in self._open:
                lines.append(f"session opened at {_where(record)} is still open")
        for origin, count in list(watch.sessions.collected_origins.items()):
            new = count - self._collected.get(origin, 0)
            if new > 0:
                times = f" ({new} times)" if new > 1 else ""
                lines.append(
                    f"session opened at {origin} was garbage-collected without being closed{times}"
                )
        for name, count in watch.checked_out().items():
            out = count - self._out.get(name, 0)
            if out > 0:
                lines.append(f"pool {name!r}: {_n(out, 'connection')} still checked out")
        for name, count in list(watch.reclaimed.items()):
            reclaimed = count - self._reclaimed.get(name, 0)
            if reclaimed > 0:
                lines.append(
                    f"pool {name!r}: {_n(reclaimed, 'checked-out connection')} reclaimed by the "
                    "garbage collector (never returned)"
                )
        return lines

    def check(self, what: str = "the test") -> None:
        """Raise :class:`LeakFound` if anything was left open since the baseline."""
        lines = self.problems()
        if lines:
            raise LeakFound(
                f"pool-observer leak guard: {what} left {_n(len(lines), 'leak')}:\n"
                + "".join(f"  - {line}\n" for line in lines)
                + HINT
            )


def _pool_name(pool: Pool) -> str:
    """The ``pool`` label an observer gives it, else its engine's URL without credentials
    (found among the pool's referrers: once per pool, and only in a test run), else its
    class."""
    for obs in live_observers():
        for tracker in list(obs._trackers.values()):
            if tracker.pool is pool:
                return tracker.name
    for holder in gc.get_referrers(pool):
        for engine in gc.get_referrers(holder) if isinstance(holder, dict) else [holder]:
            if isinstance(engine, Engine) and engine.pool is pool:
                return default_pool_name(engine.url)
    return type(pool).__name__


def _where(record: OpenSession) -> str:
    if record.origin is None:
        return "an unknown place"
    created = record.created_at
    return f"{record.origin} (created at {created})" if created else str(record.origin)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@pytest.fixture
def observer_leak_guard(request: pytest.FixtureRequest) -> Iterator[LeakGuard]:
    """Fails the test (at teardown) if it leaves a session open or a connection checked out
    on a watched engine; ``.check()`` checks now."""
    guard = LeakGuard()
    yield guard
    if request.node.get_closest_marker(MARK) is None:
        _fail_on_leaks(guard, request.node.name)


# -- the opt-in plugin: every test --------------------------------------------------------

_GUARD = pytest.StashKey[LeakGuard]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARK}: the pool-observer leak guard lets this test leave sessions open"
    )
    process_watch()  # before the app's conftest builds engines and sessions


def pytest_unconfigure(config: pytest.Config) -> None:
    global _watch
    if _watch is not None:
        _watch.detach()
        _watch = None


def _guarded(item: pytest.Item) -> bool:
    fixtures: Any = getattr(item, "fixturenames", ())
    return item.get_closest_marker(MARK) is None and "observer_leak_guard" not in fixtures


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    # The baseline is taken once the fixtures are set up: a session a wider-scoped fixture
    # opens (and keeps for other tests) is not this test's leak.
    if _guarded(item):
        item.stash[_GUARD] = LeakGuard()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    result = yield  # the test's fixtures are torn down first
    guard = item.stash.get(_GUARD, None)
    if guard is not None:
        del item.stash[_GUARD]
        _fail_on_leaks(guard, item.name)
    return result


def _fail_on_leaks(guard: LeakGuard, name: str) -> None:
    try:
        guard.check(name)
    except LeakFound as exc:
        message = str(exc)
    else:
        return
    pytest.fail(message, pytrace=False)  # the message says it all; no plugin traceback
