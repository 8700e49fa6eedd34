"""observer doctor against a real PostgreSQL cluster started with tight limits for the test."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from observer.cli import main
from observer.doctor import check_engine, check_sync_engine
from observer.doctor._pool_checks import Deployment, PoolSettings
from tests.helpers import require
from tests.helpers.pgcluster import PgCluster, available
from tests.helpers.processes import free_port

pytestmark = pytest.mark.postgres

# idle_session_timeout 5 s, idle_in_transaction_session_timeout 10 s,
# 20 connections - 3 reserved for superusers = 17 for the app.
SERVER = {
    "max_connections": "20",
    "superuser_reserved_connections": "3",
    "idle_session_timeout": "5s",
    "idle_in_transaction_session_timeout": "10s",
    "statement_timeout": "60s",
    "tcp_keepalives_idle": "2",
}
# A configuration that is fine for SERVER: 2 x (2 + 3) = 10 <= 17, recycle 4 < 5,
# pool_timeout 5 < request timeout 8 < idle_in_transaction_session_timeout 10.
CLEAN = [
    "--pool-size", "2", "--max-overflow", "3", "--pool-recycle", "4", "--pool-timeout", "5",
    "--pool-pre-ping", "--workers", "2", "--replicas", "1", "--request-timeout", "8",
]  # fmt: skip
PASSWORD = "Sup3r-Secret-PW"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    """A PostgreSQL cluster with the SERVER settings, stopped and removed after the module."""
    require(available(), "PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pg = PgCluster(settings=SERVER)
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()


def doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``observer doctor`` in-process; returns (exit code, stdout, stderr)."""
    code = main(["doctor", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def findings(out: str) -> dict[str, str]:
    """code -> severity from ``--json`` output."""
    return {f["code"]: f["severity"] for f in json.loads(out)["findings"]}


def with_option(option: str, *values: str) -> list[str]:
    """CLEAN with ``option`` replaced (or added) with ``values``."""
    args = list(CLEAN)
    if option in args:
        i = args.index(option)
        del args[i : i + (2 if option != "--pool-pre-ping" else 1)]
    return [*args, option, *values]


def test_clean_configuration_has_no_finding(
    cluster: PgCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pool that fits the server's limits and timeouts gives no finding and exit code 0."""
    code, out, _ = doctor(capsys, cluster.url(), *CLEAN, "--json")
    data = json.loads(out)
    assert (code, data["findings"], data["exit_code"]) == (0, [], 0)
    assert data["server"] == {
        "max_connections": 20,
        "superuser_reserved_connections": 3,
        "reserved_connections": 0,
        "idle_session_timeout": 5.0,
        "idle_in_transaction_session_timeout": 10.0,
        "statement_timeout": 60.0,
        "tcp_keepalives_idle": 2.0,
        "available_connections": 17,
    }
    assert data["pool"]["max_connections"] == 5


def test_values_left_out_are_printed_as_assumed(
    cluster: PgCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """What doctor judges without being told (SQLAlchemy's pool defaults, a 30 s request
    timeout) is said as assumed, with the option to pass; nothing is when every option is given."""
    code, out, _ = doctor(capsys, cluster.url(), "--pool-size", "2", "--pool-pre-ping")
    assumed = [line for line in out.splitlines() if line.startswith("  assumed  ")]
    assert assumed == [
        "  assumed  max_overflow: 10 (assumed; pass --max-overflow)",
        "  assumed  pool_recycle: never (assumed; pass --pool-recycle)",
        "  assumed  pool_timeout: 30 s (assumed; pass --pool-timeout)",
        "  assumed  request timeout: 30 s (assumed; pass --request-timeout)",
    ]
    assert "request timeout 30s" in out
    code, out, _ = doctor(capsys, cluster.url(), "--request-timeout", "9", "--json")
    assert json.loads(out)["assumed"] == {
        "--pool-size": "pool_size: 5",
        "--max-overflow": "max_overflow: 10",
        "--pool-recycle": "pool_recycle: never",
        "--pool-timeout": "pool_timeout: 30 s",
        "--pool-pre-ping": "pool_pre_ping: no",
    }
    code, out, _ = doctor(capsys, cluster.url(), *CLEAN)
    assert (code, "assumed" in out) == (0, False)
    code, out, _ = doctor(capsys, cluster.url(), *CLEAN, "--json")
    assert json.loads(out)["assumed"] == {}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            with_option("--pool-recycle", "5"),
            {"pool_recycle_vs_idle_session_timeout": "warning"},
        ),
        (
            [a for a in with_option("--pool-recycle", "-1") if a != "--pool-pre-ping"]
            + ["--no-pool-pre-ping"],
            {"pool_recycle_vs_idle_session_timeout": "error", "pool_pre_ping_off": "warning"},
        ),
        (
            [*with_option("--request-timeout", "10"), "--pool-timeout", "3"],
            {"idle_in_transaction_session_timeout_vs_request_timeout": "warning"},
        ),
        (with_option("--workers", "4"), {"connections_exceed_server_limit": "error"}),
        (with_option("--max-overflow", "-1"), {"connections_unbounded": "error"}),
        ([*CLEAN, "--no-pool-pre-ping"], {"pool_pre_ping_off": "warning"}),
        (with_option("--pool-timeout", "8"), {"pool_timeout_vs_request_timeout": "warning"}),
        (
            [*CLEAN, "--network-idle-timeout", "1.5"],
            {"pool_recycle_vs_network_idle_timeout": "warning"},
        ),
    ],
    ids=[
        "recycle-equal",
        "recycle-unset",
        "in-tx",
        "too-many",
        "unbounded",
        "pre-ping",
        "timeout",
        "network-idle",
    ],
)
def test_each_finding_appears_alone(
    cluster: PgCluster,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: dict[str, str],
) -> None:
    """One bad setting on a clean configuration gives exactly its finding and exit code 1."""
    code, out, _ = doctor(capsys, cluster.url(), *args, "--json")
    assert (findings(out), code) == (expected, 1)


def test_keepalives_shorter_than_the_network_idle_timeout_are_enough(
    cluster: PgCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """With server keepalives (2 s) inside a 3 s network idle timeout, a 4 s recycle is fine."""
    code, out, _ = doctor(capsys, cluster.url(), *CLEAN, "--network-idle-timeout", "3", "--json")
    data = json.loads(out)
    assert (code, data["findings"]) == (0, [])
    assert data["server"]["tcp_keepalives_idle"] == 2.0
    assert data["deployment"]["network_idle_timeout"] == 3.0


def test_connection_budget_message_names_the_numbers(
    cluster: PgCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over the budget, the text report gives the arithmetic and the per-process cap that fits."""
    code, out, _ = doctor(capsys, cluster.url(), *with_option("--replicas", "2"), "--workers", "2")
    assert code == 1
    assert (
        "ERROR    connections_exceed_server_limit: (pool_size 2 + max_overflow 3) x 2 workers x "
        "2 replicas = 20 connections at peak, but the server allows max_connections 20 - 3 "
        "reserved = 17" in out
    )
    assert "fix: keep pool_size + max_overflow <= 4 per process" in out
    assert out.rstrip().endswith("1 problem(s), 0 note(s).")


def test_statement_timeout_off_is_a_note_that_fails_only_on_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No statement_timeout on the server is an info finding: exit 0, 1 only with --fail-on info."""
    require(available(), "PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pg = PgCluster(settings={**SERVER, "statement_timeout": "0"})
    try:
        pg.start()
        code, out, _ = doctor(capsys, pg.url(), *CLEAN, "--json")
        assert (findings(out), code) == ({"statement_timeout_off": "info"}, 0)
        code, _, _ = doctor(capsys, pg.url(), *CLEAN, "--fail-on", "info")
        assert code == 1
    finally:
        pg.remove()


async def test_check_engine_reads_the_pool_of_an_async_engine(cluster: PgCluster) -> None:
    """check_engine takes pool_size, max_overflow, recycle, timeout and pre_ping from the engine."""
    engine = create_async_engine(
        cluster.url(),
        pool_size=3,
        max_overflow=1,
        pool_recycle=4,
        pool_timeout=2,
        pool_pre_ping=True,
    )
    try:
        report = await check_engine(engine, workers=5, request_timeout=8)
    finally:
        await engine.dispose()
    assert report.pool == PoolSettings(
        pool_class="AsyncAdaptedQueuePool",
        pool_size=3,
        max_overflow=1,
        pool_recycle=4.0,
        pool_timeout=2.0,
        pool_pre_ping=True,
    )
    assert report.deployment == Deployment(workers=5, replicas=1, request_timeout=8)
    assert [f.code for f in report.findings] == ["connections_exceed_server_limit"]
    assert (report.exit_code(), report.exit_code("error"), report.exit_code("info")) == (1, 1, 1)
    with pytest.raises(ValueError, match=r"^fail_on must be one of error, warning, info"):
        report.exit_code("fatal")


def test_check_sync_engine_flags_a_null_pool_as_unbounded(cluster: PgCluster) -> None:
    """A sync Engine on NullPool opens one connection per checkout: unbounded, an error."""
    engine = create_engine(cluster.url(driver="psycopg"), poolclass=NullPool)
    try:
        report = check_sync_engine(engine, request_timeout=8)
    finally:
        engine.dispose()
    assert report.pool.pool_size is None
    assert report.pool.max_connections is None
    assert {f.code: f.severity for f in report.findings} == {
        "connections_unbounded": "error",
        "pool_pre_ping_off": "warning",
        "pool_recycle_vs_idle_session_timeout": "error",
    }


async def test_server_picture_shows_idle_in_transaction_and_lock_waits(cluster: PgCluster) -> None:
    """Idle-in-transaction sessions of the app and a blocked ALTER show in the report, as notes."""
    app = "doctor-picture"
    dsn = f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    holder = await asyncpg.connect(dsn, server_settings={"application_name": app})
    waiter = await asyncpg.connect(dsn, server_settings={"application_name": "migration"})
    try:
        await holder.execute("CREATE TABLE IF NOT EXISTS picture (id int)")
        await holder.execute("BEGIN; LOCK TABLE picture IN ACCESS EXCLUSIVE MODE")
        blocked = asyncio.ensure_future(waiter.execute("ALTER TABLE picture ADD COLUMN x int"))
        await asyncio.sleep(0.3)
        engine = create_async_engine(cluster.url(), pool_size=2, max_overflow=3, pool_recycle=4)
        try:
            report = await check_engine(
                engine, application_name=app, request_timeout=8, pool=None, workers=2
            )
        finally:
            await engine.dispose()
        await holder.execute("ROLLBACK")
        await blocked
    finally:
        await holder.close()
        await waiter.close()
    assert report.activity.connections()["idle in transaction"] == 1
    assert report.activity.idle_in_transaction == 1
    assert 0.3 <= report.activity.idle_in_transaction_max_seconds < 5
    waiting, longest = report.activity.lock_waits["postgres"]
    assert waiting == 1
    assert 0.3 <= longest < 5
    notes = {f.code: f.severity for f in report.findings if f.severity == "info"}
    assert notes == {"idle_in_transaction_now": "info", "lock_waits_now": "info"}


def test_unreachable_database_exits_2_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing listening: exit code 2, the reason, and the URL as user, host, port and
    database only (no password); with --json also a JSON error on stdout."""
    port = free_port()
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/postgres"
    code, out, err = doctor(capsys, url, "--connect-timeout", "2")
    masked = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    assert (code, out) == (2, "")
    assert err.startswith(f"observer doctor: could not check {masked}: ConnectionRefusedError: ")
    assert PASSWORD not in err
    code, out, err = doctor(capsys, url, "--connect-timeout", "2", "--json")
    data = json.loads(out)
    assert (code, data["url"], data["exit_code"]) == (2, masked, 2)
    assert data["error"].startswith("ConnectionRefusedError: ")
    assert PASSWORD not in out + err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "observer doctor: give DATABASE_URL (or set OBSERVER_DATABASE_URL)"),
        (
            [f"mysql://root:{PASSWORD}@localhost/x"],
            "observer doctor: doctor checks PostgreSQL only (got a 'mysql' URL); "
            "expected postgresql://user:password@host:port/database",
        ),
        (
            [f"not a url {PASSWORD}"],
            "observer doctor: DATABASE_URL is not a URL; "
            "expected postgresql://user:password@host:port/database",
        ),
    ],
    ids=["missing", "not-postgres", "garbage"],
)
def test_bad_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    """A missing, foreign or unparsable URL exits 2 with a message that does not repeat it."""
    monkeypatch.delenv("OBSERVER_DATABASE_URL", raising=False)
    code, out, err = doctor(capsys, *argv)
    assert (code, out, err.strip()) == (2, "", message)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "0"], "--workers must be a whole number from 1 to 1024 (got '0')"),
        (["--pool-size", "x"], "--pool-size must be a whole number from 0 to 10000 (got 'x')"),
        (
            ["--max-overflow", "-2"],
            "--max-overflow must be a whole number from -1 to 10000 (got '-2'); -1 for unbounded",
        ),
        (
            ["--request-timeout", "-1"],
            "--request-timeout must be a number of seconds from 0.001 to 86400 (got '-1')",
        ),
        (
            ["--pool-timeout", "0"],
            "--pool-timeout must be a number of seconds from 0.001 to 3600 (got '0')",
        ),
        (
            ["--network-idle-timeout", "x"],
            "--network-idle-timeout must be a number of seconds from 0.001 to 86400 (got 'x')",
        ),
    ],
)
def test_invalid_option_names_itself(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """A bad option value stops with exit code 2 and one line naming the option and the range."""
    assert main(["doctor", "postgresql://x@127.0.0.1/x", *argv]) == 2
    assert capsys.readouterr().err == f"observer doctor: error: {message}\n"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool_size": -1}, "pool_size must be >= 0 (got -1)"),
        ({"pool_recycle": 0.0}, "pool_recycle must be > 0 seconds (got 0.0)"),
        ({"pool_timeout": 0.0}, "pool_timeout must be > 0 seconds (got 0.0)"),
        ({"max_overflow": -5}, "max_overflow must be >= -1 (got -5)"),
    ],
)
def test_pool_settings_validate(kwargs: dict[str, float], message: str) -> None:
    """PoolSettings refuses impossible values with an error naming the setting."""
    with pytest.raises(ValueError, match=r"^" + re.escape(message)):
        PoolSettings(**kwargs)  # type: ignore[arg-type]


def test_deployment_validates() -> None:
    """Deployment refuses zero workers or replicas and a non-positive request timeout."""
    for kwargs, message in [
        ({"workers": 0}, "workers must be >= 1 (got 0)"),
        ({"replicas": 0}, "replicas must be >= 1 (got 0)"),
        ({"request_timeout": 0}, "request_timeout must be > 0 seconds (got 0)"),
        ({"network_idle_timeout": -3}, "network_idle_timeout must be > 0 seconds (got -3)"),
    ]:
        with pytest.raises(ValueError, match=r"^" + re.escape(message)):
            Deployment(**kwargs)


def test_cli_never_prints_the_password(cluster: PgCluster) -> None:
    """The real ``observer doctor`` process, text and JSON, shows the URL without its password."""
    url = cluster.url(password=PASSWORD)
    outputs = []
    for extra in ([], ["--json"]):
        result = subprocess.run(
            [sys.executable, "-m", "observer.cli", "doctor", url, *CLEAN, *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    shown = f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    assert all(shown in text for text in outputs)
    assert not any(PASSWORD in text for text in outputs)
