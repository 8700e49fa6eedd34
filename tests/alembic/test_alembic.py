"""observer.alembic with real Alembic on a real PostgreSQL: lock_timeout, records, drift."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from structlog.testing import capture_logs

from observer.alembic import CodeRevisions, MigrationError, SchemaWatcher, watch_schema
from observer.alembic._options import MigrationOptions
from observer.alembic._recorder import classify
from observer.cli import main
from observer.doctor import check_sync_engine
from observer.server._view import read_activity
from observer.settings import ConfigurationError
from tests.helpers import PG_HOST, PG_PORT, PG_USER, sample
from tests.helpers.alembic_project import config, events, make_project, migrate, raw, url

pytestmark = pytest.mark.postgres

LOCK_TIMEOUT = 1.0


@pytest.fixture
async def app_engine(database: str) -> AsyncIterator[AsyncEngine]:
    """The app's engine on the test's database."""
    engine = create_async_engine(url(database), pool_size=5, max_overflow=0)
    yield engine
    await engine.dispose()


@dataclass
class AppLoad:
    """Concurrent app queries on the migrated table, each one timed."""

    engine: AsyncEngine
    waits: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self) -> None:
        while not self.stop.is_set():
            async with self.engine.connect() as conn:
                started = time.perf_counter()
                try:
                    await conn.execute(text("SELECT count(*) FROM items"))
                except Exception as exc:
                    self.errors.append(type(exc).__name__)
                self.waits.append(time.perf_counter() - started)
                await conn.rollback()
            await asyncio.sleep(0.01)

    async def during(self, work: Any, workers: int = 3) -> Any:
        """Run ``work`` while ``workers`` query in a loop; returns work's result or raises."""
        tasks = [asyncio.create_task(self.worker()) for _ in range(workers)]
        await asyncio.sleep(0.1)  # the app is busy before the migration starts
        try:
            return await work
        finally:
            self.stop.set()
            await asyncio.gather(*tasks)


async def watch_lock_waits(database: str, done: asyncio.Event) -> int:
    """The most backends the server view (sidecar/doctor query) saw waiting on locks."""
    engine = create_async_engine(url(database), poolclass=NullPool)
    most = 0
    try:
        while not done.is_set():
            async with engine.connect() as conn:
                activity = await read_activity(conn, "pool-observer")
                await conn.rollback()
            most = max(most, activity.lock_waits.get(database, (0, 0.0))[0])
            await asyncio.sleep(0.1)
    finally:
        await engine.dispose()
    return most


async def test_a_migration_that_gives_up_names_the_blocker_and_raises_one_line(
    project: Path, database: str, app_engine: AsyncEngine
) -> None:
    """ALTER TABLE behind a session holding a conflicting lock gives up after lock_timeout at
    each of its 2 attempts: each attempt logs one lock_timeout line naming the table and the
    blocking backend (pid, application_name, state, transaction age, query without literals),
    app queries on the table wait at most about lock_timeout, the server view shows the lock
    waits, and the run raises a one-line MigrationError; the database stays at its revision."""
    registry = CollectorRegistry()
    options = {"lock_timeout": LOCK_TIMEOUT, "max_attempts": 2}
    cfg = config(project, registry=registry, observer_options=options)
    await migrate(cfg, "upgrade", "0001")
    blocker = await asyncpg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        database=database,
        server_settings={"application_name": "nightly-report"},
    )
    blocker_pid = await blocker.fetchval("SELECT pg_backend_pid()")
    await blocker.execute("BEGIN")
    await blocker.fetch("SELECT * FROM items WHERE name <> 'item 7' LIMIT 1")  # ACCESS SHARE
    load = AppLoad(app_engine)
    done = asyncio.Event()
    watcher = asyncio.create_task(watch_lock_waits(database, done))
    started = time.perf_counter()
    try:
        with capture_logs() as logs:
            try:
                result = await asyncio.gather(
                    load.during(migrate(cfg, "upgrade", "head")), return_exceptions=True
                )
            finally:
                done.set()
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    elapsed = time.perf_counter() - started
    most_waiting = await watcher

    error = result[0]
    assert isinstance(error, MigrationError)
    assert isinstance(error.__cause__, DBAPIError)
    assert classify(error) == ("lock_timeout", "55P03")
    assert (error.outcome, error.revision, error.attempts) == ("lock_timeout", "0002", 2)
    message = str(error)
    assert "\n" not in message
    assert message.startswith("revision 0002 (upgrade) gave up waiting for a lock after 2 attempts")
    assert (
        f"on table items, blocked by pid {blocker_pid} (application_name 'nightly-report', "
        "idle in transaction, transaction open "
    ) in message
    assert message.endswith("s): SELECT * FROM items WHERE name <> ? LIMIT ?")
    gave_up = [e for e in events(logs) if e["event"] == "alembic.migration.lock_timeout"]
    assert [(e["attempt"], e["will_retry"]) for e in gave_up] == [(1, True), (2, False)]
    for line in gave_up:
        assert (line["revision"], line["direction"], line["outcome"]) == (
            "0002",
            "upgrade",
            "lock_timeout",
        )
        assert (line["table"], line["blocker_pid"]) == ("items", blocker_pid)
        assert line["blocker_application_name"] == "nightly-report"
        assert line["blocker_state"] == "idle in transaction"
        assert line["blocker_query"] == "SELECT * FROM items WHERE name <> ? LIMIT ?"
        assert line["blocker_xact_age_seconds"] >= LOCK_TIMEOUT - 0.1
        assert line["blockers"] == 1
        assert line["sqlstate"] == "55P03"
        assert line["log_level"] == "warning"
        assert LOCK_TIMEOUT <= line["duration_seconds"] < LOCK_TIMEOUT + 1.0
    assert 0.5 * 0.5 <= gave_up[0]["retry_in_seconds"] <= 0.5
    assert gave_up[1]["retry_in_seconds"] is None
    assert elapsed < 2 * LOCK_TIMEOUT + 3  # the whole run, process-like start included

    # The app: plenty of queries, none failed, none waited longer than lock_timeout (plus the
    # round trip and this busy event loop's scheduling; measured here: 0.99 s).
    max_wait = max(load.waits)
    print(f"app queries: {len(load.waits)}, max wait {max_wait:.3f}s (lock_timeout 1s)")
    assert load.errors == []
    assert len(load.waits) >= 10
    assert max_wait < LOCK_TIMEOUT + 0.5
    assert most_waiting >= 1  # the ALTER (and app queries queued behind it), seen by the view

    def count(name: str, outcome: str) -> float | None:
        return sample(registry, name, direction="upgrade", outcome=outcome)

    assert count("alembic_migrations_total", "success") == 1
    assert count("alembic_migrations_total", "lock_timeout") == 1  # the run's final outcome
    assert count("alembic_migration_retries_total", "lock_timeout") == 1  # attempt 1, retried
    assert sample(registry, "alembic_migration_running") == 0
    conn = await raw(database)
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0001"
        assert await conn.fetchval("SHOW lock_timeout") == "0"  # a new session: server default
    finally:
        await conn.close()

    await migrate(cfg, "upgrade", "head")  # the blocker is gone: the next run goes through
    assert count("alembic_migrations_total", "success") == 2


async def test_upgrade_then_downgrade_records_both_with_durations(
    project: Path, database: str, tmp_path: Path
) -> None:
    """Each revision step logs a start and an end with its duration, and is counted by
    direction and outcome; the textfile holds the run's metrics; the migration ran with the
    lock_timeout and statement_timeout asked for."""
    registry = CollectorRegistry()
    textfile = tmp_path / "alembic.prom"
    options = {"lock_timeout": 3, "statement_timeout": 60, "textfile": str(textfile)}
    cfg = config(project, registry=registry, observer_options=options)
    before = time.time()
    with capture_logs() as logs:
        await migrate(cfg, "upgrade", "head")
        await migrate(cfg, "downgrade", "-1")
    after = time.time()

    steps = [
        (e["event"], e["revision"], e["direction"])
        for e in events(logs)
        if e["event"].startswith("alembic.migration.")
    ]
    assert steps == [
        ("alembic.migration.started", "0001", "upgrade"),
        ("alembic.migration.finished", "0001", "upgrade"),
        ("alembic.migration.started", "0002", "upgrade"),
        ("alembic.migration.finished", "0002", "upgrade"),
        ("alembic.migration.started", "0002", "downgrade"),
        ("alembic.migration.finished", "0002", "downgrade"),
    ]
    finished = [e for e in events(logs) if e["event"] == "alembic.migration.finished"]
    for event in finished:
        assert event["outcome"] == "success"
        assert 0 < event["duration_seconds"] < 10
        assert event["started_at"] <= event["finished_at"]
    started = [e for e in events(logs) if e["event"] == "alembic.migration.started"]
    assert started[0]["lock_timeout_seconds"] == 3
    assert started[0]["statement_timeout_seconds"] == 60

    assert sample(registry, "alembic_migrations_total", direction="upgrade", outcome="success") == 2
    assert (
        sample(registry, "alembic_migrations_total", direction="downgrade", outcome="success") == 1
    )
    count = sample(
        registry, "alembic_migration_duration_seconds_count", direction="upgrade", outcome="success"
    )
    assert count == 2
    total = sample(
        registry, "alembic_migration_duration_seconds_sum", direction="downgrade", outcome="success"
    )
    assert total is not None
    assert total > 0
    stamp = sample(
        registry,
        "alembic_migration_last_timestamp_seconds",
        revision="0002",
        direction="downgrade",
        outcome="success",
    )
    assert stamp is not None
    assert before <= stamp <= after
    last = sample(
        registry,
        "alembic_migration_last_duration_seconds",
        revision="0001",
        direction="upgrade",
        outcome="success",
    )
    assert last is not None
    assert last > 0
    assert sample(registry, "alembic_migration_running") == 0

    content = textfile.read_text()
    assert "alembic_migration_running 0.0" in content
    assert 'alembic_migrations_total{direction="downgrade",outcome="success"} 1.0' in content

    conn = await raw(database)
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0001"
        row = await conn.fetchrow("SELECT * FROM observed_settings")
        assert (row["lock_timeout"], row["statement_timeout"]) == ("3s", "1min")
    finally:
        await conn.close()


def test_sync_template_with_a_transaction_per_migration(tmp_path: Path, database: str) -> None:
    """The sync `alembic init` template works the same, and with transaction_per_migration
    the timeouts hold in every migration's transaction."""
    ini = make_project(tmp_path, url(database, "psycopg"), template="generic")
    registry = CollectorRegistry()
    cfg = config(
        ini,
        registry=registry,
        transaction_per_migration=True,
        observer_options={"lock_timeout": 2},
    )
    with capture_logs() as logs:
        command.upgrade(cfg, "head")
    assert [e["revision"] for e in events(logs, "alembic.migration.finished")] == ["0001", "0002"]
    assert sample(registry, "alembic_migrations_total", direction="upgrade", outcome="success") == 2

    async def settings() -> str:
        conn = await raw(database)
        try:
            value: str = await conn.fetchval("SELECT lock_timeout FROM observed_settings")
            return value
        finally:
            await conn.close()

    assert asyncio.run(settings()) == "2s"


def test_a_failing_migration_is_recorded_and_its_error_propagates(
    tmp_path: Path, database: str
) -> None:
    """A migration raising an error counts as failed, logs the error, and raises a one-line
    MigrationError caused by Alembic's exception, never retried; with one transaction for the
    run, the steps of the same transaction are reported rolled back."""
    ini = make_project(tmp_path, url(database, "psycopg"), template="generic")
    bad = tmp_path / "migrations" / "versions" / "0003_bad.py"
    bad.write_text(
        'revision = "0003"\ndown_revision = "0002"\nbranch_labels = None\ndepends_on = None\n'
        "from alembic import op\n\n"
        "def upgrade() -> None:\n    op.execute('ALTER TABLE missing ADD COLUMN x int')\n\n"
        "def downgrade() -> None:\n    pass\n"
    )
    registry = CollectorRegistry()
    cfg = config(ini, registry=registry, transaction_per_migration=False)
    with capture_logs() as logs, pytest.raises(MigrationError, match="missing") as raised:
        command.upgrade(cfg, "head")
    assert classify(raised.value) == ("failed", "42P01")
    assert str(raised.value).startswith("revision 0003 (upgrade) ended failed: ProgrammingError")
    assert "\n" not in str(raised.value)
    failed = events(logs, "alembic.migration.failed")
    assert len(failed) == 1
    assert failed[0]["revision"] == "0003"
    assert "UndefinedTable" in failed[0]["error"]
    rolled_back = events(logs, "alembic.migrations.rolled_back")
    assert rolled_back[0]["revisions"] == ["0001", "0002"]
    assert sample(registry, "alembic_migrations_total", direction="upgrade", outcome="failed") == 1
    # 0001 and 0002 were undone with 0003: not counted as applied.
    assert sample(registry, "alembic_migrations_total", direction="upgrade", outcome="success") == 0
    assert sample(registry, "alembic_migration_running") == 0


def test_a_statement_over_statement_timeout_is_its_own_outcome(
    tmp_path: Path, database: str
) -> None:
    """With statement_timeout set, a statement running longer is cancelled by the server and
    recorded as outcome statement_timeout (the migration fails, as Alembic reports)."""
    ini = make_project(tmp_path, url(database, "psycopg"), template="generic")
    slow = tmp_path / "migrations" / "versions" / "0003_slow.py"
    slow.write_text(
        'revision = "0003"\ndown_revision = "0002"\nbranch_labels = None\ndepends_on = None\n'
        "from alembic import op\n\n"
        "def upgrade() -> None:\n    op.execute('SELECT pg_sleep(3)')\n\n"
        "def downgrade() -> None:\n    pass\n"
    )
    registry = CollectorRegistry()
    cfg = config(
        ini,
        registry=registry,
        transaction_per_migration=True,
        observer_options={"statement_timeout": 0.5},
    )
    with capture_logs() as logs, pytest.raises(MigrationError, match="statement timeout") as raised:
        command.upgrade(cfg, "head")
    assert isinstance(raised.value.__cause__, DBAPIError)
    timed_out = events(logs, "alembic.migration.statement_timeout")
    assert [(e["revision"], e["outcome"]) for e in timed_out] == [("0003", "statement_timeout")]
    assert 0.5 <= timed_out[0]["duration_seconds"] < 2.5
    assert events(logs, "alembic.migrations.rolled_back") == []  # one transaction per migration
    assert (
        sample(
            registry, "alembic_migrations_total", direction="upgrade", outcome="statement_timeout"
        )
        == 1
    )


def test_a_database_behind_the_code_is_drift_in_metrics_and_doctor(
    project: Path, database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """One revision behind the code's head: alembic_schema_drift 1 with both revisions in the
    info metric, and doctor fails with the alembic_schema_drift finding; after the upgrade the
    metric is 0, the old info series is gone and doctor is clean."""
    from sqlalchemy import create_engine

    asyncio.run(migrate(config(project), "upgrade", "0001"))
    registry = CollectorRegistry()
    scripts = str(project.parent / "migrations")
    engine = create_engine(url(database, "psycopg"))
    watcher = SchemaWatcher(engine, script_location=scripts, registry=registry)
    with capture_logs() as logs:
        state = watcher.check_sync()
    assert (state.state, state.database_revision, state.code_head) == ("behind", "0001", "0002")
    assert sample(registry, "alembic_schema_drift", database=database) == 1
    behind = {
        "database": database,
        "database_revision": "0001",
        "code_head": "0002",
        "state": "behind",
    }
    assert sample(registry, "alembic_schema_revision_info", **behind) == 1
    assert events(logs, "alembic.schema_drift")[0]["state"] == "behind"

    capsys.readouterr()
    args = [url(database), "--fail-on", "error", "--alembic-script-location", scripts]
    code = main(["doctor", *args, "--json"])
    report = json.loads(capsys.readouterr().out)
    drift = [f for f in report["findings"] if f["code"] == "alembic_schema_drift"]
    assert code == 1
    assert drift[0]["severity"] == "error"
    assert "revision 0001 but the code's head is 0002" in drift[0]["message"]
    assert "alembic upgrade head" in drift[0]["fix"]
    assert report["schema"]["state"] == "behind"

    code = main(["doctor", url(database), "--fail-on", "error", "--alembic-config", str(project)])
    out = capsys.readouterr().out
    assert code == 1
    assert "schema   Alembic revision 0001 in the database, 0002 in the code: behind" in out
    assert "ERROR    alembic_schema_drift" in out

    report_of_engine = check_sync_engine(engine, alembic=CodeRevisions(script_location=scripts))
    assert report_of_engine.schema is not None
    assert report_of_engine.schema.state == "behind"
    assert "alembic_schema_drift" in {f.code for f in report_of_engine.findings}

    code = main(["doctor", url(database), "--alembic-script-location", str(project.parent)])
    assert code == 2  # the wrong directory: a usage error, before connecting
    assert "no Alembic revision found under" in capsys.readouterr().err

    with capture_logs():
        asyncio.run(migrate(config(project), "upgrade", "head"))
    state = watcher.check_sync()
    engine.dispose()
    assert state.state == "current"
    assert sample(registry, "alembic_schema_drift", database=database) == 0
    assert sample(registry, "alembic_schema_revision_info", **behind) is None
    current = {**behind, "database_revision": "0002", "state": "current"}
    assert sample(registry, "alembic_schema_revision_info", **current) == 1
    capsys.readouterr()
    code = main(["doctor", *args, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert "alembic_schema_drift" not in {f["code"] for f in report["findings"]}


async def test_a_database_ahead_of_the_code_or_never_migrated_is_drift(
    project: Path, database: str, app_engine: AsyncEngine
) -> None:
    """A revision the code does not know (a newer release migrated) is 'ahead'; a database
    without alembic_version is 'uninitialized'; both are drift."""
    registry = CollectorRegistry()
    scripts = str(project.parent / "migrations")
    watcher = SchemaWatcher(app_engine, script_location=scripts, registry=registry)
    assert (await watcher.check()).state == "uninitialized"
    assert (await watcher.check()).database_revision == "none"
    await migrate(config(project), "upgrade", "head")
    conn = await raw(database)
    try:
        await conn.execute("UPDATE alembic_version SET version_num = 'f00d'")
    finally:
        await conn.close()
    state = await watcher.check()
    assert (state.state, state.drift) == ("ahead", True)
    assert sample(registry, "alembic_schema_drift", database=database) == 1


async def test_watch_schema_checks_at_start_and_periodically(
    project: Path, database: str, app_engine: AsyncEngine
) -> None:
    """watch_schema() from a running loop checks at once and again every interval."""
    await migrate(config(project), "upgrade", "0001")
    registry = CollectorRegistry()
    scripts = str(project.parent / "migrations")
    watcher = watch_schema(app_engine, script_location=scripts, registry=registry, interval=0.2)
    try:
        for _ in range(50):
            if sample(registry, "alembic_schema_drift", database=database) == 1:
                break
            await asyncio.sleep(0.05)
        assert sample(registry, "alembic_schema_drift", database=database) == 1
        await migrate(config(project), "upgrade", "head")
        for _ in range(50):
            if sample(registry, "alembic_schema_drift", database=database) == 0:
                break
            await asyncio.sleep(0.05)
        assert sample(registry, "alembic_schema_drift", database=database) == 0
    finally:
        await watcher.aclose()


def test_watch_schema_on_a_sync_engine_runs_in_a_thread(project: Path, database: str) -> None:
    """A sync Engine outside any event loop is checked by a daemon thread until close()."""
    from sqlalchemy import create_engine

    asyncio.run(migrate(config(project), "upgrade", "head"))
    engine = create_engine(url(database, "psycopg"))
    registry = CollectorRegistry()
    watcher = watch_schema(
        engine, alembic_config=str(project), registry=registry, interval=0.1, database="main"
    )
    try:
        for _ in range(50):
            if watcher.latest is not None:
                break
            time.sleep(0.05)
        assert watcher.latest is not None
        assert watcher.latest.state == "current"
        assert sample(registry, "alembic_schema_drift", database="main") == 0
    finally:
        watcher.close()
        engine.dispose()
    assert "observer-schema-watcher" not in {t.name for t in threading.enumerate()}


def test_setup_errors_name_the_fix(tmp_path: Path) -> None:
    """A wrong script location, a missing one and bad timeouts fail at once, saying what to do."""
    from sqlalchemy import create_engine

    engine = create_engine("sqlite://")
    with pytest.raises(ConfigurationError, match="point script_location at the directory"):
        SchemaWatcher(engine, script_location=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigurationError, match="exactly one of script_location"):
        SchemaWatcher(engine)
    with pytest.raises(ConfigurationError, match="lock_timeout must be a number of seconds"):
        MigrationOptions(lock_timeout=-1)
    with pytest.raises(ConfigurationError, match="OBSERVER_ALEMBIC_LOCK_TIMEOUT must be"):
        MigrationOptions.resolve(environ={"OBSERVER_ALEMBIC_LOCK_TIMEOUT": "soon"})
    with pytest.raises(ConfigurationError, match="pushgateway must be an http"):
        MigrationOptions(pushgateway="pushgateway:9091")
    options = MigrationOptions.resolve(
        environ={"OBSERVER_ALEMBIC_LOCK_TIMEOUT": "off", "OBSERVER_ALEMBIC_STATEMENT_TIMEOUT": "30"}
    )
    assert (options.lock_timeout, options.statement_timeout) == (0.0, 30.0)
    assert MigrationOptions.resolve(lock_timeout=2, environ={}).lock_timeout == 2
    engine.dispose()


class _Pushgateway(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(("PUT", self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.slow
def test_alembic_command_line_writes_the_textfile_and_pushes(
    project: Path, database: str, tmp_path: Path
) -> None:
    """`alembic upgrade head` as its own short process, configured by environment variables,
    leaves a textfile for node_exporter, pushes to a Pushgateway (here a stand-in), and with
    PROMETHEUS_MULTIPROC_DIR set leaves its counts where the sidecar reads them."""
    from observer.metrics._multiprocess import MultiprocessDirectory

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pushgateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    textfile = tmp_path / "textfile" / "alembic.prom"
    textfile.parent.mkdir()
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    env = {
        **os.environ,
        "OBSERVER_ALEMBIC_TEXTFILE": str(textfile),
        "OBSERVER_ALEMBIC_PUSHGATEWAY": f"http://127.0.0.1:{server.server_address[1]}",
        "OBSERVER_ALEMBIC_LOCK_TIMEOUT": "4",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    try:
        result = subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "alembic"),
                "-c",
                str(project),
                "upgrade",
                "head",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert "alembic.migration.finished" in result.stdout + result.stderr
    content = textfile.read_text()
    assert 'alembic_migrations_total{direction="upgrade",outcome="success"} 2.0' in content
    assert "alembic_migration_running 0.0" in content
    pushes = [(m, p) for m, p, _ in _Pushgateway.received]
    assert pushes[0] == ("PUT", f"/metrics/job/alembic/database/{database}")
    assert len(pushes) == 4  # run start, after each of 2 revisions, run end
    assert b"alembic_migration_running 1.0" in _Pushgateway.received[0][2]
    assert b"alembic_migration_running 0.0" in _Pushgateway.received[-1][2]
    served = CollectorRegistry()
    MultiprocessDirectory(str(multiproc)).register(served)
    assert sample(served, "alembic_migrations_total", direction="upgrade", outcome="success") == 2
    assert (
        sample(
            served,
            "alembic_migration_duration_seconds_count",
            direction="upgrade",
            outcome="success",
        )
        == 2
    )


def test_unreachable_sinks_never_fail_the_migration(project: Path, tmp_path: Path) -> None:
    """A textfile directory that does not exist and a Pushgateway nobody listens on are logged
    once each (the Pushgateway's credentials left out); the migration succeeds."""
    cfg = config(
        project,
        observer_options={
            "textfile": str(tmp_path / "no" / "such" / "dir" / "alembic.prom"),
            "pushgateway": "http://deployer:s3cret@127.0.0.1:9",
        },
    )
    with capture_logs() as logs:
        asyncio.run(migrate(cfg, "upgrade", "head"))
    problems = events(logs, "alembic.metrics_not_published")
    assert sorted(e["sink"] for e in problems) == ["pushgateway", "textfile"]
    assert [e["target"] for e in problems if e["sink"] == "pushgateway"] == ["http://127.0.0.1:9"]
    assert len(events(logs, "alembic.migration.finished")) == 2


def test_offline_mode_writes_the_timeouts_into_the_script(project: Path) -> None:
    """`alembic upgrade head --sql` emits the SETs ahead of the migrations' SQL."""
    from io import StringIO

    buffer = StringIO()
    cfg = config(project, observer_options={"lock_timeout": 5, "statement_timeout": 30})
    cfg.output_buffer = buffer
    # The async template's offline branch does not call observer.alembic, so patch it in:
    env = project.parent / "migrations" / "env.py"
    env.write_text(
        env.read_text().replace(
            '        dialect_opts={"paramstyle": "named"},\n    )\n\n'
            "    with context.begin_transaction():\n        context.run_migrations()",
            '        dialect_opts={"paramstyle": "named"},\n    )\n\n'
            "    import observer.alembic\n\n"
            '    observer.alembic.run_migrations(**config.attributes["observer_options"])',
        )
    )
    command.upgrade(cfg, "head", sql=True)
    script = buffer.getvalue()
    assert "SET lock_timeout = '5000ms';" in script
    assert "SET statement_timeout = '30000ms';" in script
    assert script.index("SET lock_timeout") < script.index("CREATE TABLE items")


def test_run_migrations_outside_env_py_says_how_to_call_it() -> None:
    """Called outside an Alembic command, it fails at once, saying where it belongs."""
    import observer.alembic

    with pytest.raises(ConfigurationError, match=r"runs inside Alembic's env\.py"):
        observer.alembic.run_migrations()


def test_the_alembic_metric_names_are_the_ones_monitoring_may_use() -> None:
    """What observer.alembic registers is exactly ALEMBIC_METRICS, with the same types."""
    from observer.alembic._metrics import metrics_for
    from observer.alembic._schema_drift import SchemaMetrics
    from observer.monitoring._names import ALEMBIC_METRICS

    registry = CollectorRegistry()
    metrics_for(registry)
    assert metrics_for(registry) is metrics_for(registry)  # once per registry
    SchemaMetrics(registry)
    exported = {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in registry.collect()
    }
    assert exported == ALEMBIC_METRICS


def _series(registry: CollectorRegistry, minutes: int) -> list[dict[str, str]]:
    """promtool input series of the registry's alembic_schema_* samples, as scraped from
    job api, instance api-1:8000 every minute for ``minutes`` minutes."""
    found = []
    for family in registry.collect():
        for s in family.samples:
            if s.name.startswith("alembic_schema_"):
                labels = {"job": "api", "instance": "api-1:8000", **s.labels}
                matchers = ", ".join(f'{k}="{v}"' for k, v in labels.items())
                found.append(
                    {"series": f"{s.name}{{{matchers}}}", "values": f"{s.value:g}x{minutes}"}
                )
    return found


@pytest.mark.promtool
def test_the_drift_alert_fires_on_what_the_watcher_exports(
    project: Path, database: str, tmp_path: Path, promtool: str
) -> None:
    """The series a real watcher exports for a database one revision behind fire
    SQLAlchemyAlembicSchemaDrift after 15 minutes (not before); those of a database at the
    head never do (promtool against the shipped rules)."""
    import yaml
    from sqlalchemy import create_engine

    from tests.monitoring.shipped import ALERTS

    asyncio.run(migrate(config(project), "upgrade", "0001"))
    engine = create_engine(url(database, "psycopg"))
    scripts = str(project.parent / "migrations")
    behind, current = CollectorRegistry(), CollectorRegistry()
    SchemaWatcher(engine, script_location=scripts, registry=behind).check_sync()
    asyncio.run(migrate(config(project), "upgrade", "head"))
    SchemaWatcher(engine, script_location=scripts, registry=current).check_sync()
    engine.dispose()
    labels = {
        "severity": "warning",
        "job": "api",
        "instance": "api-1:8000",
        "database": database,
        "database_revision": "0001",
        "code_head": "0002",
        "state": "behind",
    }
    annotations = {
        "summary": "The database schema and the running code are at different Alembic revisions.",
        "description": f"api on api-1:8000 expects Alembic head 0002 but database {database} is "
        "at 0001 (behind) for 15m, longer than a deploy takes: run the migration or roll the "
        "deploy back.",
        "runbook_url": "https://github.com/pool-observer/pool-observer/blob/main/docs/runbooks.md"
        "#sqlalchemyalembicschemadrift",
    }
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _series(behind, 30),
                "alert_rule_test": [
                    {"eval_time": "14m", "alertname": "SQLAlchemyAlembicSchemaDrift"},
                    {
                        "eval_time": "16m",
                        "alertname": "SQLAlchemyAlembicSchemaDrift",
                        "exp_alerts": [{"exp_labels": labels, "exp_annotations": annotations}],
                    },
                ],
            },
            {
                "interval": "1m",
                "input_series": _series(current, 60),
                "alert_rule_test": [
                    {"eval_time": "60m", "alertname": "SQLAlchemyAlembicSchemaDrift"},
                ],
            },
        ],
    }
    path = tmp_path / "drift-test.yaml"
    path.write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.promtool
def test_the_dashboard_marks_each_migration_and_the_time_it_runs(
    tmp_path: Path, promtool: str
) -> None:
    """The pools dashboard's annotation queries return a point right after a revision ran
    (new, or run again) and while a migration runs, and nothing otherwise; they read only the
    Alembic metrics."""
    import yaml

    from observer.monitoring._names import ALEMBIC_METRICS, series_names
    from observer.monitoring._pools_dashboard import migration_annotations
    from observer.monitoring.config import MonitoringConfig
    from tests.monitoring.promql import metric_names
    from tests.monitoring.shipped import ALERTS, DASHBOARDS

    shipped = json.loads(
        next(p for p in DASHBOARDS if p.name == "pool-observer-pools.json").read_text()
    )
    ours = migration_annotations(MonitoringConfig())
    assert shipped["annotations"]["list"][1:] == list(ours)
    marks, running = (a["target"]["expr"] for a in ours)
    for expr in (marks, running):
        assert metric_names(expr) <= series_names(ALEMBIC_METRICS)
    stamp = 'alembic_migration_last_timestamp_seconds{job="alembic", database="app", '

    def upgraded(revision: str) -> str:
        return f'{{revision="{revision}", direction="upgrade", outcome="success"}}'

    cases = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    # 0002 upgraded at 10m; 0001 downgraded at 20m, upgraded again at 30m.
                    {
                        "series": stamp
                        + 'revision="0002", direction="upgrade", outcome="success"}',
                        "values": "_x10 600x30",
                    },
                    {
                        "series": stamp
                        + 'revision="0001", direction="upgrade", outcome="success"}',
                        "values": "0x29 1800x10",
                    },
                    {
                        "series": 'alembic_migration_running{job="alembic", database="app"}',
                        "values": "0x9 1 0x30",
                    },
                ],
                "promql_expr_test": [
                    {
                        "expr": marks,
                        "eval_time": "10m",
                        "exp_samples": [
                            {
                                "labels": upgraded("0002"),
                                "value": 600,
                            }
                        ],
                    },
                    {"expr": marks, "eval_time": "12m", "exp_samples": []},
                    {
                        "expr": marks,
                        "eval_time": "30m",
                        "exp_samples": [
                            {
                                "labels": upgraded("0001"),
                                "value": 1,
                            }
                        ],
                    },
                    {"expr": marks, "eval_time": "32m", "exp_samples": []},
                    {
                        "expr": running,
                        "eval_time": "10m",
                        "exp_samples": [{"labels": '{job="alembic"}', "value": 1}],
                    },
                    {"expr": running, "eval_time": "12m", "exp_samples": []},
                ],
            }
        ],
    }
    path = tmp_path / "annotations-test.yaml"
    path.write_text(yaml.safe_dump(cases))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alembic_namespace_is_curated() -> None:
    """observer.alembic exports exactly its __all__, each name defined."""
    import observer.alembic

    public = {name for name in vars(observer.alembic) if not name.startswith("_")}
    assert public - {"annotations"} == set(observer.alembic.__all__)
    assert "run_migrations" in observer.alembic.__all__
    assert "watch_schema" in observer.alembic.__all__


async def test_an_unreachable_database_is_logged_once_and_the_watcher_goes_on(
    project: Path,
) -> None:
    """Periodic checks that fail (database down) log alembic.schema_check_failed once, export
    nothing new and keep retrying; check() itself raises."""
    registry = CollectorRegistry()
    engine = create_async_engine(
        f"postgresql+asyncpg://{PG_USER}@127.0.0.1:1/none", poolclass=NullPool
    )
    scripts = str(project.parent / "migrations")
    with pytest.raises(ConnectionRefusedError):
        await SchemaWatcher(engine, script_location=scripts, registry=registry).check()
    with capture_logs() as logs:
        watcher = watch_schema(engine, script_location=scripts, registry=registry, interval=0.05)
        await asyncio.sleep(0.5)
        await watcher.aclose()
    failed = events(logs, "alembic.schema_check_failed")
    assert len(failed) == 1
    assert failed[0]["error"] == "ConnectionRefusedError"
    assert watcher.latest is None
    assert sample(registry, "alembic_schema_drift", database="none") is None
    await engine.dispose()
