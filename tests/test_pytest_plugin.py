"""The leak guard for users' test suites (``-p observer.pytest_plugin``), run with pytester."""

from __future__ import annotations

import pytest

# Each inner run is a subprocess: one that never exits (an aiosqlite worker thread left running
# by a leaked connection on SQLAlchemy before 2.0.46: docs/compatibility.md) fails its test
# after this many seconds instead of stalling the whole suite.
RUN_TIMEOUT = 300

CONFTEST = """
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from observer import Observer

# what an app does at import time: engines, and an observer watching them
engine = create_engine("sqlite:///{db}/sync.db")
async_engine = create_async_engine("sqlite+aiosqlite:///{db}/async.db", poolclass=NullPool)
observer = Observer(registry=CollectorRegistry())
observer.watch(engine, name="sync")
observer.watch(async_engine, name="async")
"""

SYNC_TESTS = """
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from conftest import engine

KEPT = []


def test_clean():
    with Session(engine) as session:
        session.execute(text("SELECT 1"))


def test_left_open():
    session = Session(engine)
    session.execute(text("SELECT 1"))
    KEPT.append(session)


@pytest.mark.observer_allow_leaks
def test_allowed():
    session = Session(engine)
    session.execute(text("SELECT 1"))
    KEPT.append(session)


def test_dropped():
    session = Session(engine)
    session.execute(text("SELECT 1"))


def test_connection_kept():
    connection = engine.connect()
    connection.execute(text("SELECT 1"))
    KEPT.append(connection)


@pytest.fixture
def session():
    with Session(engine) as s:
        yield s


def test_fixture_session_is_not_a_leak(session):
    session.execute(text("SELECT 1"))


@pytest.fixture(scope="module")
def shared_session():
    s = Session(engine)
    s.execute(text("SELECT 1"))
    yield s
    s.close()


def test_a_module_fixture_session_is_not_this_test_leak(shared_session):
    shared_session.execute(text("SELECT 2"))
"""

ASYNC_TESTS = """
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from conftest import async_engine

KEPT = []


async def test_async_clean():
    async with AsyncSession(async_engine) as session:
        await session.execute(text("SELECT 1"))


async def test_async_left_open():
    session = AsyncSession(async_engine)
    await session.execute(text("SELECT 1"))
    KEPT.append(session)


async def test_async_guard_fixture(observer_leak_guard):
    session = AsyncSession(async_engine)
    await session.execute(text("SELECT 1"))
    try:
        observer_leak_guard.check()
    finally:
        await session.close()
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    db = pytester.mkdir("db")
    pytester.makeconftest(CONFTEST.format(db=db))
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_sync=SYNC_TESTS, test_async=ASYNC_TESTS)
    return pytester


HINT = (
    "close each session ('async with Session() as session:' or 'with Session() as session:') "
    "and each connection; or mark the test @pytest.mark.observer_allow_leaks"
)


def test_leaky_tests_fail_with_where_the_session_was_opened(suite: pytest.Pytester) -> None:
    """Each leaky test, sync or async, fails with one line per leak and the line that opened
    the session; clean tests, an allowed leak and a session a fixture closes pass."""
    result = suite.runpytest_subprocess(
        "-p", "observer.pytest_plugin", "-p", "no:cacheprovider", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=9, failed=1, errors=4)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_async_left_open*",
            "pool-observer leak guard: test_async_left_open left 2 leaks:",
            "  - session opened at test_async.py:17 in test_async_left_open (created at "
            "test_async.py:16 in test_async_left_open) is still open",
            "  - pool 'async': 1 connection still checked out",
            HINT,
            "*ERROR at teardown of test_left_open*",
            "pool-observer leak guard: test_left_open left 2 leaks:",
            "  - session opened at test_sync.py:17 in test_left_open (created at "
            "test_sync.py:16 in test_left_open) is still open",
            "  - pool 'sync': 1 connection still checked out",
            HINT,
            "*ERROR at teardown of test_dropped*",
            "pool-observer leak guard: test_dropped left 2 leaks:",
            "  - session opened at test_sync.py:30 in test_dropped was garbage-collected without "
            "being closed",
            "  - pool 'sync': 1 checked-out connection reclaimed by the garbage collector (never "
            "returned)",
            HINT,
            "*ERROR at teardown of test_connection_kept*",
            "pool-observer leak guard: test_connection_kept left 1 leak:",
            "  - pool 'sync': 1 connection still checked out",
            HINT,
            "E           observer.pytest_plugin.LeakFound: pool-observer leak guard: the test left "
            "2 leaks:",
            "E             - session opened at test_async.py:23 in test_async_guard_fixture "
            "(created at test_async.py:22 in test_async_guard_fixture) is still open",
            "*FAILED test_async.py::test_async_guard_fixture*",
        ]
    )
    assert "During handling" not in result.stdout.str()
    for passing in (
        "test_async_clean",
        "test_clean",
        "test_allowed",
        "test_fixture_session_is_not_a_leak",
        "test_a_module_fixture_session_is_not_this_test_leak",
    ):
        assert f"of {passing}" not in result.stdout.str()


def test_clean_tests_pass_under_the_guard(suite: pytest.Pytester) -> None:
    """Tests that close what they open pass, sync and async."""
    result = suite.runpytest_subprocess(
        "-p",
        "observer.pytest_plugin",
        "-p",
        "no:cacheprovider",
        "-k",
        "clean or fixture_session",
        timeout=RUN_TIMEOUT,
    )
    result.assert_outcomes(passed=4)


def test_without_the_plugin_nothing_is_checked(suite: pytest.Pytester) -> None:
    """The guard is opt-in: without ``-p observer.pytest_plugin`` leaky tests pass."""
    result = suite.runpytest_subprocess(
        "-p", "no:cacheprovider", "-k", "left_open or connection_kept", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=3)


def test_the_fixture_alone_fails_a_leaky_test_at_teardown(suite: pytest.Pytester) -> None:
    """Imported into a conftest without the plugin, the fixture checks the tests that use it."""
    suite.makepyfile(
        test_fixture_only="""
from sqlalchemy import text
from sqlalchemy.orm import Session

from conftest import engine
from observer.pytest_plugin import observer_leak_guard  # noqa: F401

KEPT = []


def test_leaks(observer_leak_guard):
    session = Session(engine)
    session.execute(text("SELECT 1"))
    KEPT.append(session)
"""
    )
    result = suite.runpytest_subprocess(
        "-p", "no:cacheprovider", "test_fixture_only.py", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "pool-observer leak guard: test_leaks left 2 leaks:",
            "  - session opened at test_fixture_only.py:12 in test_leaks (created at "
            "test_fixture_only.py:11 in test_leaks) is still open",
        ]
    )


OWN_ENGINE_APP = """
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import observer

# the app's own engine, watched by its observer
engine = create_async_engine("sqlite+aiosqlite:///{db}/app.db")
obs = observer.Observer(registry=CollectorRegistry())
obs.watch(engine, name="app")

BACKGROUND = []


async def purge_stale_refresh_tokens(Session):
    session = Session()
    await session.execute(text("SELECT 1"))  # never closed: the planted leak
    BACKGROUND.append(session)


async def purge_and_drop(Session):
    session = Session()
    await session.execute(text("SELECT 2"))  # never closed, then dropped
"""

OWN_ENGINE_CONFTEST = """
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine


@pytest.fixture
async def Session():
    # the test suite's own engine and session factory: no Observer watches them
    engine = create_async_engine("sqlite+aiosqlite:///{db}/tests.db")
    yield async_sessionmaker(engine)
    await engine.dispose()
"""

OWN_ENGINE_TESTS = """
from sqlalchemy import text

import app


async def test_login_leaks(Session):
    await app.purge_stale_refresh_tokens(Session)


async def test_login_drops(Session):
    await app.purge_and_drop(Session)


async def test_login_clean(Session):
    async with Session() as session:
        await session.execute(text("SELECT 1"))
"""


def test_a_suite_that_builds_its_own_engine_and_session_factory_is_guarded(
    pytester: pytest.Pytester,
) -> None:
    """The common pattern: the app watches its engine, the tests' conftest builds another
    engine and session factory that no Observer watches. The app's code leaks a session on the
    conftest's factory: the test fails naming the app's lines and the connection still out of
    the conftest's pool (named by its URL); a session the app drops unclosed fails its test too,
    with the connection the garbage collector reclaimed; a clean test passes."""
    db = pytester.mkdir("db")
    pytester.makepyfile(app=OWN_ENGINE_APP.format(db=db))
    pytester.makeconftest(OWN_ENGINE_CONFTEST.format(db=db))
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_login=OWN_ENGINE_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "observer.pytest_plugin", "-p", "no:cacheprovider", timeout=RUN_TIMEOUT
    )
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_login_leaks*",
            "pool-observer leak guard: test_login_leaks left 2 leaks:",
            "  - session opened at app.py:17 in purge_stale_refresh_tokens (created at "
            "app.py:16 in purge_stale_refresh_tokens) is still open",
            f"  - pool 'sqlite:///{db}/tests.db': 1 connection still checked out",
            HINT,
            "*ERROR at teardown of test_login_drops*",
            "pool-observer leak guard: test_login_drops left 2 leaks:",
            "  - session opened at app.py:23 in purge_and_drop was garbage-collected without being "
            "closed",
            f"  - pool 'sqlite:///{db}/tests.db': 1 checked-out connection reclaimed by the "
            "garbage collector (never returned)",
            HINT,
        ]
    )
    assert "of test_login_clean" not in result.stdout.str()
