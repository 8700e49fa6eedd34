"""``observer doctor``: check a pool's settings against the PostgreSQL server it talks to.

Exit codes: 0 no finding at or above ``--fail-on`` (default: warning), 1 findings,
2 usage error or the database could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from observer.alembic._schema_drift import (
    DEFAULT_VERSION_TABLE,
    CodeRevisions,
    SchemaState,
    check_schema,
    read_revisions,
    read_revisions_sync,
)
from observer.doctor._pool_checks import (
    DEFAULT_MAX_OVERFLOW,
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    Deployment,
    PoolSettings,
    check_activity,
    check_settings,
    pool_settings_of,
)
from observer.server._findings import SEVERITY_RANK, Finding
from observer.server._view import (
    STATES,
    Activity,
    ServerSettings,
    application_name_from_env,
    read_activity,
    read_activity_sync,
    read_settings,
    read_settings_sync,
)
from observer.settings import ConfigurationError

DATABASE_URL_ENV = "OBSERVER_DATABASE_URL"
EXIT_OK, EXIT_FINDINGS, EXIT_UNUSABLE = 0, 1, 2


@dataclass(frozen=True)
class Report:
    """Everything doctor found: the inputs it judged and its findings."""

    url: str  # password masked
    pool: PoolSettings
    deployment: Deployment
    server: ServerSettings
    activity: Activity
    findings: list[Finding] = field(default_factory=list)
    schema: SchemaState | None = None  # when given the Alembic script directory

    def exit_code(self, fail_on: str = "warning") -> int:
        """1 when a finding is at least as severe as ``fail_on``, else 0."""
        if fail_on not in SEVERITY_RANK:
            raise ValueError(
                f"fail_on must be one of error, warning, info (got {fail_on!r}); it is the "
                "lowest severity that fails the check"
            )
        threshold = SEVERITY_RANK[fail_on]
        bad = any(SEVERITY_RANK[f.severity] >= threshold for f in self.findings)
        return EXIT_FINDINGS if bad else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "url": self.url,
            "pool": {**asdict(self.pool), "max_connections": self.pool.max_connections},
            "deployment": asdict(self.deployment),
            "server": {
                **asdict(self.server),
                "available_connections": self.server.available_connections,
            },
            "activity": {
                "application_name": self.activity.application_name,
                "database": self.activity.database,
                "connections": self.activity.connections(),
                "idle_in_transaction": self.activity.idle_in_transaction,
                "idle_in_transaction_max_seconds": self.activity.idle_in_transaction_max_seconds,
                "oldest_transaction_seconds": self.activity.oldest_transaction_seconds,
                "lock_waiting_backends": sum(n for n, _ in self.activity.lock_waits.values()),
                "lock_wait_max_seconds": max(
                    (w for _, w in self.activity.lock_waits.values()), default=0.0
                ),
                "client_backends": self.activity.client_backends,
            },
            "findings": [asdict(f) for f in self.findings],
            "schema": None
            if self.schema is None
            else {**asdict(self.schema), "drift": self.schema.drift},
        }


def _report(
    url: URL,
    pool: PoolSettings,
    deployment: Deployment,
    server: ServerSettings,
    act: Activity,
    schema: SchemaState | None = None,
) -> Report:
    findings = check_settings(pool, deployment, server) + check_activity(act)
    if schema is not None:
        findings += check_schema(schema)
    findings.sort(key=lambda f: -SEVERITY_RANK[f.severity])
    return Report(str(url), pool, deployment, server, act, findings, schema)


async def check_engine(
    engine: AsyncEngine,
    *,
    workers: int = 1,
    replicas: int = 1,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    network_idle_timeout: float | None = None,
    application_name: str | None = None,
    pool: PoolSettings | None = None,
    alembic: CodeRevisions | None = None,
    version_table: str = DEFAULT_VERSION_TABLE,
) -> Report:
    """Check an AsyncEngine's pool against its server; uses one connection from the engine.

    ``pool`` overrides the settings read from the engine's pool (the command line describes
    a pool it does not have). With ``alembic`` (the app's script directory), the database's
    Alembic revision is compared with the code's head too.
    """
    if not isinstance(engine, AsyncEngine):
        raise ConfigurationError(
            f"check_engine() needs an AsyncEngine (got {type(engine).__name__}); for a sync "
            "Engine call check_sync_engine(engine)"
        )
    deployment = Deployment(workers, replicas, request_timeout, network_idle_timeout)
    settings = pool if pool is not None else pool_settings_of(engine.sync_engine.pool)
    async with engine.connect() as conn:
        server = await read_settings(conn)
        activity = await read_activity(conn, application_name or application_name_from_env())
        schema = None
        if alembic is not None:
            revisions = await read_revisions(conn, version_table=version_table)
            schema = alembic.compare(engine.url.database or "", revisions)
        await conn.rollback()
    return _report(engine.url, settings, deployment, server, activity, schema)


def check_sync_engine(
    engine: Engine,
    *,
    workers: int = 1,
    replicas: int = 1,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    network_idle_timeout: float | None = None,
    application_name: str | None = None,
    alembic: CodeRevisions | None = None,
    version_table: str = DEFAULT_VERSION_TABLE,
) -> Report:
    """Check a sync Engine's pool against its server; uses one connection from the engine."""
    if not isinstance(engine, Engine):
        raise ConfigurationError(
            f"check_sync_engine() needs a sync Engine (got {type(engine).__name__}); for an "
            "AsyncEngine use: await check_engine(engine)"
        )
    deployment = Deployment(workers, replicas, request_timeout, network_idle_timeout)
    settings = pool_settings_of(engine.pool)
    with engine.connect() as conn:
        server = read_settings_sync(conn)
        activity = read_activity_sync(conn, application_name or application_name_from_env())
        schema = None
        if alembic is not None:
            revisions = read_revisions_sync(conn, version_table=version_table)
            schema = alembic.compare(engine.url.database or "", revisions)
        conn.rollback()
    return _report(engine.url, settings, deployment, server, activity, schema)


def render_text(report: Report, out: TextIO) -> None:
    """The human-readable report."""
    pool, dep, srv, act = report.pool, report.deployment, report.server, report.activity

    def s(v: float | None) -> str:
        return "off" if not v else f"{v:g}s"

    peak = pool.max_connections
    peak_text = "unbounded" if peak is None else str(peak * dep.processes)
    print(f"pool-observer doctor: {report.url}", file=out)
    print(
        f"  pool     {pool.pool_class} pool_size={pool.pool_size} "
        f"max_overflow={pool.max_overflow} pool_recycle={s(pool.pool_recycle)} "
        f"pool_timeout={s(pool.pool_timeout)} pool_pre_ping={pool.pool_pre_ping}",
        file=out,
    )
    print(
        f"  deploy   {dep.workers} worker(s) x {dep.replicas} replica(s): up to {peak_text} "
        f"connections; the server allows {srv.available_connections}; "
        f"request timeout {s(dep.request_timeout)}",
        file=out,
    )
    print(
        f"  server   max_connections={srv.max_connections} "
        f"superuser_reserved_connections={srv.superuser_reserved_connections} "
        f"idle_session_timeout={s(srv.idle_session_timeout)} "
        f"idle_in_transaction_session_timeout={s(srv.idle_in_transaction_session_timeout)} "
        f"statement_timeout={s(srv.statement_timeout)} "
        f"tcp_keepalives_idle={s(srv.tcp_keepalives_idle) if srv.tcp_keepalives_idle else 'os'}",
        file=out,
    )
    counts = act.connections()
    states = ", ".join(f"{counts[st]} {st}" for st in STATES if counts[st]) or "no connections"
    waiting = sum(n for n, _ in act.lock_waits.values())
    print(
        f"  now      application_name '{act.application_name}': {states}; "
        f"{waiting} backend(s) waiting on locks; {act.client_backends} client backends in all",
        file=out,
    )
    if report.schema is not None:
        sch = report.schema
        print(
            f"  schema   Alembic revision {sch.database_revision} in the database, "
            f"{sch.code_head} in the code: {sch.state}",
            file=out,
        )
    print(file=out)
    for f in report.findings:
        print(f"{f.severity.upper():8} {f.code}: {f.message}", file=out)
        print(f"{'':8} fix: {f.fix}", file=out)
    problems = [f for f in report.findings if f.severity != "info"]
    print(
        f"{len(problems)} problem(s), {len(report.findings) - len(problems)} note(s).",
        file=out,
    )


def _positive(kind: type[int] | type[float], name: str, minimum: float = 0) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number (got {text!r})") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum:g} (got {text})")
        return value

    return parse


def _seconds(name: str) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number (got {text!r})") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0 seconds (got {text})")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``observer doctor``."""
    parser.epilog = "exit codes: 0 clean, 1 findings, 2 usage error or database unreachable"
    parser.add_argument(
        "database_url",
        nargs="?",
        metavar="DATABASE_URL",
        help=f"postgresql[+asyncpg]://user:password@host:port/db (default: ${DATABASE_URL_ENV})",
    )
    parser.add_argument("--pool-size", type=_positive(int, "--pool-size"), default=None)
    parser.add_argument(
        "--max-overflow", type=_positive(int, "--max-overflow", -1), default=None,
        help="-1 for unbounded",
    )  # fmt: skip
    parser.add_argument(
        "--pool-recycle", type=_positive(float, "--pool-recycle", -1), default=None,
        help="seconds; -1 for never (SQLAlchemy's default)",
    )  # fmt: skip
    parser.add_argument("--pool-timeout", type=_seconds("--pool-timeout"), default=None)
    parser.add_argument("--pool-pre-ping", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--workers", type=_positive(int, "--workers", 1), default=1)
    parser.add_argument("--replicas", type=_positive(int, "--replicas", 1), default=1)
    parser.add_argument(
        "--request-timeout", type=_seconds("--request-timeout"),
        default=DEFAULT_REQUEST_TIMEOUT, help="seconds a client or proxy waits for a response",
    )  # fmt: skip
    parser.add_argument(
        "--network-idle-timeout", type=_seconds("--network-idle-timeout"), default=None,
        help="seconds a load balancer, NAT or firewall between app and database keeps an idle "
        "connection (e.g. 350 for an AWS NLB)",
    )  # fmt: skip
    parser.add_argument(
        "--application-name", default=None,
        help="application_name of the app's connections (default: $OBSERVER_APPLICATION_NAME "
        "or pool-observer)",
    )  # fmt: skip
    alembic = parser.add_mutually_exclusive_group()
    alembic.add_argument(
        "--alembic-config", metavar="ALEMBIC_INI",
        help="compare the database's Alembic revision with the head of this alembic.ini's scripts",
    )  # fmt: skip
    alembic.add_argument(
        "--alembic-script-location", metavar="DIR",
        help="the same, given the directory holding env.py and versions/",
    )  # fmt: skip
    parser.add_argument("--alembic-version-table", default=DEFAULT_VERSION_TABLE)
    parser.add_argument("--connect-timeout", type=_seconds("--connect-timeout"), default=10)
    parser.add_argument("--fail-on", choices=["error", "warning", "info"], default="warning")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _async_url(raw: str) -> URL:
    try:
        url = make_url(raw)
    except ArgumentError:
        # SQLAlchemy's message repeats the string, password included: say it without it.
        raise ValueError(
            "DATABASE_URL is not a URL; expected postgresql://user:password@host:port/database"
        ) from None
    if url.get_backend_name() not in {"postgresql", "postgres"}:
        raise ValueError(
            f"doctor checks PostgreSQL only (got a {url.get_backend_name()!r} URL); "
            "expected postgresql://user:password@host:port/database"
        )
    return url.set(drivername="postgresql+asyncpg")


def _redact(text: str, url: URL) -> str:
    if url.password:
        text = text.replace(str(url.password), "***")
    return text.splitlines()[0] if text else text


def run(args: argparse.Namespace) -> int:
    """Run doctor from parsed arguments; returns the exit code."""
    raw = args.database_url or os.environ.get(DATABASE_URL_ENV)
    if not raw:
        print(f"observer doctor: give DATABASE_URL (or set {DATABASE_URL_ENV})", file=sys.stderr)
        return EXIT_UNUSABLE
    try:
        url = _async_url(raw)
        pool = PoolSettings(
            pool_size=DEFAULT_POOL_SIZE if args.pool_size is None else args.pool_size,
            max_overflow=DEFAULT_MAX_OVERFLOW if args.max_overflow is None else args.max_overflow,
            pool_recycle=args.pool_recycle if args.pool_recycle and args.pool_recycle > 0 else None,
            pool_timeout=DEFAULT_POOL_TIMEOUT if args.pool_timeout is None else args.pool_timeout,
            pool_pre_ping=args.pool_pre_ping,
        )
        alembic = (
            CodeRevisions(
                alembic_config=args.alembic_config, script_location=args.alembic_script_location
            )
            if args.alembic_config or args.alembic_script_location
            else None
        )
    except ValueError as exc:
        print(f"observer doctor: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    engine = create_async_engine(
        url, poolclass=NullPool, connect_args={"timeout": args.connect_timeout}
    )

    async def go() -> Report:
        try:
            return await asyncio.wait_for(
                check_engine(
                    engine,
                    workers=args.workers,
                    replicas=args.replicas,
                    request_timeout=args.request_timeout,
                    network_idle_timeout=args.network_idle_timeout,
                    application_name=args.application_name,
                    pool=pool,
                    alembic=alembic,
                    version_table=args.alembic_version_table,
                ),
                timeout=args.connect_timeout * 2,
            )
        finally:
            await engine.dispose()

    try:
        report = asyncio.run(go())
    except Exception as exc:
        reason = _redact(f"{type(exc).__name__}: {exc}", url)
        print(f"observer doctor: could not check {url}: {reason}", file=sys.stderr)
        if args.json:
            json.dump({"url": str(url), "error": reason, "exit_code": EXIT_UNUSABLE}, sys.stdout)
            print()
        return EXIT_UNUSABLE
    if args.json:
        data = report.to_dict()
        data["exit_code"] = report.exit_code(args.fail_on)
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        render_text(report, sys.stdout)
    return report.exit_code(args.fail_on)
