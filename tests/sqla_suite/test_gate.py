"""The SQLAlchemy-suite gate's own logic: comparing runs, accepted lists, the plugin, the sdist."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.sqla_suite import accepted, sdist
from tests.sqla_suite.compare import compare, counts, matches

REPO = Path(__file__).resolve().parents[2]


def report(outcomes: dict[str, str], **watch: Any) -> dict[str, Any]:
    """An ``--observer-report`` as the plugin writes it (a watched one when ``watch`` is set)."""
    base: dict[str, Any] = {"outcomes": outcomes, "watched": bool(watch)}
    if watch:
        base.update(
            tests_watched=len(outcomes),
            engines_watched=3,
            pools_watched=1,
            checkouts_seen=5,
            sessions_seen=2,
            hook_errors={},
            refused={},
            harness_errors={},
        )
        base.update(watch)
    return base


def watched(outcomes: dict[str, str], **overrides: Any) -> dict[str, Any]:
    return report(outcomes, engines_watched=overrides.pop("engines_watched", 3), **overrides)


def test_same_outcomes_pass() -> None:
    """Identical outcomes, engines watched and no hook error: no difference, no problem."""
    outcomes = {"t.py::A::test_a": "passed", "t.py::A::test_b": "skipped"}
    verdict = compare(report(outcomes), watched(outcomes), {}, {})
    assert verdict.differences == []
    assert verdict.problems == []


def test_unexplained_difference_fails() -> None:
    """A test that passes bare and fails watched is a problem naming both outcomes."""
    verdict = compare(
        report({"t.py::A::test_a": "passed"}), watched({"t.py::A::test_a": "failed"}), {}, {}
    )
    assert [(d.test_id, d.bare, d.watched, d.reason) for d in verdict.differences] == [
        ("t.py::A::test_a", "passed", "failed", None)
    ]
    assert verdict.problems == ["t.py::A::test_a: passed bare, failed watched"]


def test_accepted_difference_passes_with_its_reason() -> None:
    """A difference listed in the accepted table is reported with its reason, not a problem."""
    verdict = compare(
        report({"t.py::A_sqlite+pysqlite_3_40_1::test_a[x-1]": "passed"}),
        watched({"t.py::A_sqlite+pysqlite_3_40_1::test_a[x-1]": "failed"}),
        {"t.py::A_*::test_a[x-1]": "issue #13 item 2"},
        {},
    )
    assert [d.reason for d in verdict.differences] == ["issue #13 item 2"]
    assert verdict.problems == []
    assert verdict.stale == []


def test_missing_test_id_is_a_difference() -> None:
    """A test id that ran in one arm only counts as a difference ("absent" in the other)."""
    verdict = compare(
        report({"t.py::test_a": "passed", "t.py::test_b": "passed"}),
        watched({"t.py::test_a": "passed"}),
        {},
        {},
    )
    assert verdict.problems == ["t.py::test_b: passed bare, absent watched"]


def test_accepted_entry_without_difference_is_stale() -> None:
    """An accepted entry whose test no longer differs is listed as stale (and passes)."""
    outcomes = {"t.py::test_a": "passed"}
    verdict = compare(report(outcomes), watched(outcomes), {"t.py::test_a": "issue #13"}, {})
    assert verdict.stale == ["t.py::test_a"]
    assert verdict.problems == []


def test_run_that_watched_nothing_fails() -> None:
    """Same outcomes prove nothing when no engine was watched, or the Observers saw no
    checkout: the gate fails."""
    outcomes = {"t.py::test_a": "passed"}
    nothing = compare(report(outcomes), watched(outcomes, engines_watched=0), {}, {})
    assert nothing.problems == ["the watched run watched no engine"]
    blind = compare(report(outcomes), watched(outcomes, checkouts_seen=0), {}, {})
    assert blind.problems == ["the watched run's Observers counted no checkout"]
    unwatched = compare(report(outcomes), report(outcomes), {}, {})
    assert unwatched.problems == ["the watched run was not started with --observer-watch"]


def test_hook_errors_fail_unless_accepted() -> None:
    """observer_hook_errors_total during a test fails the gate unless accepted for that hook."""
    outcomes = {"t.py::test_a": "passed"}
    errors = {"t.py::test_a": {"do_connect": 2, "checkin": 1}}
    verdict = compare(
        report(outcomes),
        watched(outcomes, hook_errors=errors),
        {},
        {"t.py::test_a": {"do_connect": "issue #13 item 2"}},
    )
    assert verdict.hook_errors == errors
    assert verdict.problems == ["t.py::test_a: observer_hook_errors_total{hook='checkin'} = 1"]


def test_harness_errors_fail() -> None:
    """An error of the harness itself (it could not watch) fails the gate."""
    outcomes = {"t.py::test_a": "passed"}
    verdict = compare(
        report(outcomes), watched(outcomes, harness_errors={"t.py::test_a": ["boom"]}), {}, {}
    )
    assert verdict.problems == ["t.py::test_a: harness error: boom"]


def test_star_is_the_only_wildcard() -> None:
    """``*`` matches any text; brackets of parametrized ids match themselves."""
    assert matches("a.py::T_*::test[x-1]", "a.py::T_postgresql+asyncpg_15_8::test[x-1]")
    assert not matches("a.py::T_*::test[x-1]", "a.py::T_sqlite::test[x-2]")
    assert not matches("a.py::test[ab]", "a.py::testa")


def test_counts_do_not_look_like_a_pytest_summary() -> None:
    """Per-arm counts read ``outcome=n``, never pytest's ``n passed``."""
    assert counts(report({"a": "passed", "b": "passed", "c": "failed"})) == "failed=1 passed=2"


def test_accepted_reason_must_name_an_issue() -> None:
    """An accepted entry whose reason names no issue fails the gate, difference or hook."""
    outcomes = {"t.py::test_a": "passed"}
    verdict = compare(
        report(outcomes),
        watched(outcomes, hook_errors={"t.py::test_a": {"close": 1}}),
        {"t.py::test_a": "flaky"},
        {"t.py::test_a": {"close": "harmless"}},
    )
    assert verdict.problems == [
        "accepted entry t.py::test_a: the reason names no issue (issue #N)",
        "accepted entry t.py::test_a: the reason names no issue (issue #N)",
    ]


def test_shipped_accepted_lists_pass_their_own_check() -> None:
    """The accepted lists in tests/sqla_suite/accepted.py raise no problem of their own."""
    outcomes = {"t.py::test_a": "passed"}
    verdict = compare(report(outcomes), watched(outcomes))
    assert verdict.problems == []
    assert sorted(verdict.stale) == sorted(accepted.DIFFERENCES)


def make_sdist(path: Path, names: list[str]) -> Path:
    archive = path / "sqlalchemy-9.9.9.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in names:
            data = b"# stub\n"
            info = tarfile.TarInfo(f"sqlalchemy-9.9.9/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def test_unpack_leaves_the_library_out(tmp_path: Path) -> None:
    """Only the tests, their configuration and the testing plugin's bootstrap are unpacked:
    no copy of the library that could be imported instead of the installed release."""
    archive = make_sdist(
        tmp_path,
        [
            "lib/sqlalchemy/__init__.py",
            "lib/sqlalchemy/pool/base.py",
            "lib/sqlalchemy/testing/plugin/bootstrap.py",
            "test/conftest.py",
            "test/engine/test_pool.py",
            "setup.cfg",
            "pyproject.toml",
            "doc/index.rst",
        ],
    )
    root = sdist.unpack(archive, tmp_path / "run")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [
        "lib/sqlalchemy/testing/plugin/bootstrap.py",
        "pyproject.toml",
        "setup.cfg",
        "test/conftest.py",
        "test/engine/test_pool.py",
    ]


def test_suite_files_follow_the_release(tmp_path: Path) -> None:
    """Each pattern must match: older 2.0 names its asyncio engine tests test_engine_py3k.py."""
    names = [
        "test/engine/test_pool.py",
        "test/engine/test_reconnect.py",
        "test/engine/test_execute.py",
        "test/ext/asyncio/test_engine_py3k.py",
        "test/ext/asyncio/test_session_py3k.py",
        "test/orm/test_transaction.py",
    ]
    root = sdist.unpack(make_sdist(tmp_path, names), tmp_path / "run")
    assert sdist.suite_files(root) == names
    (root / "test/orm/test_transaction.py").unlink()
    with pytest.raises(SystemExit, match=r"test/orm/test_transaction\.py is not in"):
        sdist.suite_files(root)


PLUGIN_TESTS = """
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool


@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown")


@pytest.fixture
def broken_setup():
    raise RuntimeError("setup")


def test_engine():
    engine = create_engine("sqlite://", poolclass=QueuePool, pool_size=2, max_overflow=1)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    with Session(engine) as session:
        assert session.execute(text("SELECT 2")).scalar() == 2
    engine.dispose()


def test_bare_pool():
    import sqlite3
    pool = QueuePool(lambda: sqlite3.connect(":memory:"), pool_size=1)
    pool.connect().close()


def test_failed():
    assert False


def test_skipped():
    pytest.skip("no")


@pytest.mark.xfail(reason="known")
def test_xfailed():
    assert False


def test_setup_error(broken_setup):
    pass


def test_teardown_error(broken_teardown):
    pass
"""


@pytest.mark.parametrize("watch", [False, True], ids=["bare", "watched"])
def test_plugin_records_every_outcome(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, watch: bool
) -> None:
    """The plugin records one outcome per test id; with --observer-watch one Observer per test
    watched the engine (pool_size= still accepted), its session and the engine-less pool."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(test_suite=PLUGIN_TESTS)
    out = pytester.path / "report.json"
    args = ["-p", "tests.sqla_suite.plugin", f"--observer-report={out}", "-p", "no:cacheprovider"]
    # a subprocess: --observer-watch patches SQLAlchemy for the rest of the process
    result = pytester.runpytest_subprocess(*args, *(["--observer-watch"] if watch else []))
    result.assert_outcomes(passed=3, failed=1, skipped=1, xfailed=1, errors=2)
    data = json.loads(out.read_text())
    assert data["outcomes"] == {
        "test_suite.py::test_engine": "passed",
        "test_suite.py::test_bare_pool": "passed",
        "test_suite.py::test_failed": "failed",
        "test_suite.py::test_skipped": "skipped",
        "test_suite.py::test_xfailed": "xfailed",
        "test_suite.py::test_setup_error": "error",
        "test_suite.py::test_teardown_error": "passed+teardown-error",
    }
    assert data["watched"] is watch
    if watch:
        assert (data["tests_watched"], data["engines_watched"], data["pools_watched"]) == (7, 2, 1)
        assert (data["checkouts_seen"], data["sessions_seen"]) == (3, 1)
        assert (data["hook_errors"], data["refused"], data["harness_errors"]) == ({}, {}, {})
    else:
        assert "engines_watched" not in data
