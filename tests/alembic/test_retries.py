"""Short lock waits, retried; the option rule; the blocker named; the lines through logging."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from observer.alembic._blockers import query_prefix
from observer.alembic._log import line
from observer.alembic._options import MigrationOptions
from observer.alembic._retry import Backoff
from tests.helpers.alembic_project import (
    blocked_migration,
    config,
    events,
    make_project,
    migrate,
    raw,
    url,
)

pytestmark = pytest.mark.postgres


@pytest.mark.slow
async def test_with_the_defaults_a_blocked_migration_stalls_nobody_and_succeeds_by_itself(
    project: Path, database: str
) -> None:
    """A session holds SELECT ... FOR UPDATE on items for 8 s while `alembic upgrade head`
    adds a column to it, at 4 requests/s through a pool of 5: with the helper's defaults
    (lock_timeout 1 s, retries) requests to another table never wait on the migration, the
    table's own wait at most one lock_timeout, and the migration succeeds by itself soon after
    the lock is released, each attempt before that logged with the blocker."""
    cfg = config(project)
    await migrate(cfg, "upgrade", "0001")
    with capture_logs() as logs:
        stalls = await blocked_migration(cfg, database, rate=4)
    print(stalls.row("observer.alembic defaults"))
    assert stalls.migration_error is None
    assert stalls.errors == []
    assert stalls.requests >= 30
    assert stalls.other_table_max < 1.0
    assert stalls.locked_table_max < 1.0 + 0.5  # one lock_timeout, plus a busy 2-core machine
    assert stalls.most_checked_out < 5
    assert stalls.released_at <= stalls.migration_seconds < stalls.released_at + 10.5
    timeouts = events(logs, "alembic.migration.lock_timeout")
    assert len(timeouts) >= 3
    assert {(e["revision"], e["table"], e["will_retry"]) for e in timeouts} == {
        ("0002", "items", True)
    }
    assert [e["attempt"] for e in timeouts] == list(range(1, len(timeouts) + 1))
    finished = events(logs, "alembic.migration.finished")
    assert [(e["revision"], e["attempt"]) for e in finished] == [("0002", len(timeouts) + 1)]
    conn = await raw(database)
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0002"
    finally:
        await conn.close()


@pytest.mark.slow
async def test_plain_alembic_stalls_the_table_and_exhausts_the_pool(
    tmp_path: Path, database: str
) -> None:
    """The control: the same scenario with the template's env.py (no observer.alembic): the
    ALTER waits the full 8 s, the table's requests queue behind it, use up the pool, and
    requests to the other table stall too."""
    ini = make_project(tmp_path, url(database), observer=False)
    cfg = config(ini)
    await migrate(cfg, "upgrade", "0001")
    stalls = await blocked_migration(cfg, database, rate=4)
    print(stalls.row("plain Alembic"))
    assert stalls.migration_error is None
    assert stalls.locked_table_max > 6.0
    assert stalls.other_table_max > 3.0
    assert stalls.most_checked_out == 5


def test_backoff_doubles_with_jitter_within_the_attempts_and_the_time_allowed() -> None:
    """The n-th pause lies between half and all of 0.5 s * 2**(n-1), at most 10 s; none after
    max_attempts, none that would start the next attempt past retry_for."""
    options = MigrationOptions(max_attempts=8, retry_for=60)
    low, high = Backoff(options, rand=lambda: 0.0), Backoff(options, rand=lambda: 1.0)
    assert [low.delay(n, 0) for n in range(1, 8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert [high.delay(n, 0) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert high.delay(8, 0) is None
    assert high.delay(3, 57.9) == 2.0
    assert high.delay(3, 58.1) is None
    assert Backoff(MigrationOptions(max_attempts=1)).delay(1, 0) is None


def test_the_environment_wins_over_the_keyword() -> None:
    """OBSERVER_ALEMBIC_* replaces env.py's keyword and the replacement is reported; a keyword
    alone, or an equal variable, is used as it is."""
    env = {
        "OBSERVER_ALEMBIC_LOCK_TIMEOUT": "2",
        "OBSERVER_ALEMBIC_MAX_ATTEMPTS": "3",
        "OBSERVER_ALEMBIC_RETRY_FOR": "off",
    }
    options = MigrationOptions.resolve(
        lock_timeout=5, max_attempts=3, statement_timeout=9, environ=env
    )
    assert (options.lock_timeout, options.max_attempts, options.retry_for) == (2.0, 3, 0.0)
    assert options.statement_timeout == 9
    assert options.overridden == (("lock_timeout", "5", "2"),)
    defaults = MigrationOptions.resolve(environ={})
    assert (defaults.lock_timeout, defaults.max_attempts, defaults.retry_for) == (1.0, 10, 60.0)


def test_a_variable_overriding_env_py_is_used_and_logged(
    project: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """env.py says lock_timeout=5, the deploy sets OBSERVER_ALEMBIC_LOCK_TIMEOUT=2: the
    migration runs with 2 s and a warning names both values."""
    import asyncio

    monkeypatch.setenv("OBSERVER_ALEMBIC_LOCK_TIMEOUT", "2")
    cfg = config(project, observer_options={"lock_timeout": 5})
    with capture_logs() as logs:
        asyncio.run(migrate(cfg, "upgrade", "head"))
    overridden = events(logs, "alembic.option_overridden")
    assert [(e["option"], e["keyword"], e["environment"]) for e in overridden] == [
        ("lock_timeout", "5", "2")
    ]
    assert overridden[0]["log_level"] == "warning"

    async def setting() -> str:
        conn = await raw(database)
        try:
            value: str = await conn.fetchval("SELECT lock_timeout FROM observed_settings")
            return value
        finally:
            await conn.close()

    assert asyncio.run(setting()) == "2s"


def test_a_blockers_query_is_logged_without_its_values() -> None:
    """String, dollar-quoted and number literals become ?, placeholders stay, whitespace folds,
    and the prefix is at most 80 characters."""
    assert (
        query_prefix("SELECT *\n  FROM users WHERE email = 'a''b@x' AND id = 42 AND t = $1")
        == "SELECT * FROM users WHERE email = ? AND id = ? AND t = $1"
    )
    assert query_prefix("UPDATE t SET body = $tag$secret$tag$ WHERE k2 = 3.5") == (
        "UPDATE t SET body = ? WHERE k2 = ?"
    )
    long = query_prefix("SELECT " + ", ".join(f"column_{i}" for i in range(40)) + " FROM t")
    assert len(long) == 80
    assert long.endswith("...")
    assert query_prefix(None) == ""


def test_without_structlog_configured_the_lines_go_through_stdlib_logging(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process that never configured structlog gets each event as one `event key=value`
    line on the stdlib logger observer.alembic, the fields also as record attributes."""
    import asyncio

    structlog.reset_defaults()
    try:
        with caplog.at_level(logging.INFO, logger="observer.alembic"):
            asyncio.run(migrate(config(project), "upgrade", "0001"))
    finally:
        structlog.reset_defaults()
    records = [r for r in caplog.records if r.name == "observer.alembic"]
    assert [r.getMessage().split(" ")[0] for r in records] == [
        "alembic.migration.started",
        "alembic.migration.finished",
    ]
    finished = records[1]
    assert finished.getMessage().startswith(
        'alembic.migration.finished revision=0001 direction=upgrade outcome=success step="upgrade'
    )
    assert "\n" not in finished.getMessage()
    attributes: Any = finished
    assert (attributes.event, attributes.revision, attributes.attempt) == (
        "alembic.migration.finished",
        "0001",
        1,
    )


def test_with_structlog_configured_for_json_the_lines_are_json(project: Path) -> None:
    """observer.configure_logging() (structlog, JSON): each migration event is one JSON object."""
    import asyncio

    from observer import configure_logging

    stream = io.StringIO()
    configure_logging(stream=stream)
    try:
        asyncio.run(migrate(config(project), "upgrade", "0001"))
    finally:
        structlog.reset_defaults()
    lines = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [
        ("alembic.migration.started", "info"),
        ("alembic.migration.finished", "info"),
    ]
    assert lines[1]["revision"] == "0001"


def test_a_line_quotes_what_needs_it() -> None:
    """Values with spaces, quotes or = are JSON-quoted; None is left out; lists are joined."""
    assert (
        line("e", {"a": "x y", "b": None, "c": 1.5, "d": ["1", "2"], "f": True, "g": ""})
        == 'e a="x y" c=1.5 d=1,2 f=true g=""'
    )


@pytest.mark.slow
def test_alembic_command_line_prints_one_line_per_attempt_and_one_failed_line(
    project: Path, database: str
) -> None:
    """`alembic upgrade head` as its own process, tuned by the environment, against a table
    another session locks: each attempt is one warning line of the ini's logging naming the
    table and the blocker, and the failure one `FAILED:` line, with no traceback."""
    import os
    import subprocess
    import sys

    import psycopg

    from tests.helpers import PG_HOST, PG_PORT, PG_USER

    env = {
        **os.environ,
        "OBSERVER_ALEMBIC_LOCK_TIMEOUT": "0.3",
        "OBSERVER_ALEMBIC_MAX_ATTEMPTS": "2",
    }
    alembic = [os.path.join(os.path.dirname(sys.executable), "alembic"), "-c", str(project)]
    subprocess.run([*alembic, "upgrade", "0001"], env=env, capture_output=True, check=True)
    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=database, application_name="report"
    ) as blocker:
        pid = blocker.info.backend_pid
        blocker.execute("LOCK TABLE items IN ACCESS SHARE MODE")
        result = subprocess.run(
            [*alembic, "upgrade", "head"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        blocker.rollback()
    output = result.stdout + result.stderr
    assert result.returncode == 255, output  # alembic's util.err(): sys.exit(-1)
    assert "Traceback" not in output
    attempts = [text for text in output.splitlines() if "alembic.migration.lock_timeout" in text]
    assert len(attempts) == 2
    for number, text in enumerate(attempts, 1):
        assert text.startswith(
            "WARNI [observer.alembic] alembic.migration.lock_timeout revision=0002 "
            f"direction=upgrade outcome=lock_timeout attempt={number} max_attempts=2 "
        )
        assert f" table=items blocker_pid={pid} blocker_application_name=report " in text
        assert ' blocker_state="idle in transaction" ' in text
        assert ' blocker_query="LOCK TABLE items IN ACCESS SHARE MODE" ' in text
    failed = [text for text in output.splitlines() if text.startswith("FAILED:")]
    assert len(failed) == 1
    assert failed[0].startswith(
        "FAILED: revision 0002 (upgrade) gave up waiting for a lock after 2 attempts in "
    )
    assert f"on table items, blocked by pid {pid} (application_name 'report', idle in" in failed[0]
    assert len(output.splitlines()) < 15
