"""A pytest plugin for your test suite: a test that leaves an ORM session open or a connection
checked out on an engine an :class:`~observer.Observer` watches fails, with where it was opened.

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
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from observer._observer import Observer, live_observers
from observer.sessions._tracker import OpenSession

MARK = "observer_allow_leaks"
HINT = (
    "close each session ('async with Session() as session:' or 'with Session() as session:') "
    "and each connection; or mark the test @pytest.mark.observer_allow_leaks"
)
RECLAIMED = "sqlalchemy_pool_connections_reclaimed_total"


class LeakFound(AssertionError):
    """A test left sessions open or connections checked out; the message lists each one."""


class LeakGuard:
    """What was open when a test started, and what the test left behind."""

    def __init__(self) -> None:
        self._open: dict[int, OpenSession] = {}  # held, so their ids cannot be reused
        self._leaks: dict[int, dict[tuple[str, str, str], int]] = {}
        self._out: dict[tuple[int, str], int] = {}
        self._reclaimed: dict[tuple[int, str], float] = {}
        self.start()

    def start(self) -> None:
        """Take the baseline now (done when the guard is created)."""
        for obs in live_observers():
            obs.flush()
            for record in obs.sessions.open.values():
                self._open[id(record)] = record
            self._leaks[id(obs)] = dict(obs.sessions.leak_origins)
            for tracker in list(obs._trackers.values()):
                key = (id(obs), tracker.name)
                self._out[key] = tracker.state().checked_out
                self._reclaimed[key] = _reclaimed(obs, tracker.name)

    def problems(self) -> list[str]:
        """One line per session or connection the test left behind (after a collection)."""
        gc.collect()
        lines: list[str] = []
        for obs in live_observers():
            obs.flush()
            for record in sorted(obs.sessions.open.values(), key=lambda r: r.started):
                if id(record) not in self._open:
                    lines.append(f"session opened at {_where(record.origin)} is still open")
            before = self._leaks.get(id(obs), {})
            for (reason, _route, origin), count in obs.sessions.leak_origins.items():
                new = count - before.get((reason, _route, origin), 0)
                if reason == "garbage_collected" and new > 0:
                    times = f" ({new} times)" if new > 1 else ""
                    lines.append(
                        f"session opened at {origin} was garbage-collected without being "
                        f"closed{times}"
                    )
            for tracker in list(obs._trackers.values()):
                key = (id(obs), tracker.name)
                out = tracker.state().checked_out - self._out.get(key, 0)
                if out > 0:
                    lines.append(
                        f"pool {tracker.name!r}: {_n(out, 'connection')} still checked out"
                    )
                reclaimed = int(_reclaimed(obs, tracker.name) - self._reclaimed.get(key, 0))
                if reclaimed > 0:
                    lines.append(
                        f"pool {tracker.name!r}: {_n(reclaimed, 'checked-out connection')} "
                        "reclaimed by the garbage collector (never returned)"
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


def _reclaimed(obs: Observer, pool: str) -> float:
    return obs.registry.get_sample_value(RECLAIMED, {"pool": pool}) or 0.0


def _where(origin: object) -> str:
    return str(origin) if origin is not None else "an unknown place (capture_origin is off)"


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
