"""What doctor found: the report, its exit code, its JSON and its text for a person."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from sqlalchemy.engine import URL

from observer._dsn import display_url
from observer.doctor._pool_checks import Deployment, PoolSettings, check_activity, check_settings
from observer.server._findings import SEVERITY_RANK, Finding
from observer.server._revisions import SchemaState, check_schema
from observer.server._view import STATES, Activity, ServerSettings

EXIT_OK, EXIT_FINDINGS, EXIT_UNUSABLE = 0, 1, 2


@dataclass(frozen=True)
class Report:
    """Everything doctor found: the inputs it judged and its findings."""

    url: str  # backend://user@host:port/database: never a password (observer._dsn)
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


def build_report(
    url: URL,
    pool: PoolSettings,
    deployment: Deployment,
    server: ServerSettings,
    act: Activity,
    schema: SchemaState | None = None,
) -> Report:
    """Judge the inputs; the findings most severe first."""
    findings = check_settings(pool, deployment, server) + check_activity(act)
    if schema is not None:
        findings += check_schema(schema)
    findings.sort(key=lambda f: -SEVERITY_RANK[f.severity])
    return Report(display_url(url, user=True), pool, deployment, server, act, findings, schema)


def render_text(report: Report, out: TextIO, assumed: Mapping[str, str] | None = None) -> None:
    """The human-readable report; ``assumed``: option -> ``name: value`` assumed for it."""
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
    for option, text in (assumed or {}).items():
        print(f"  assumed  {text} (assumed; pass {option})", file=out)
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
    print_findings(report.findings, out)


def print_findings(findings: Sequence[Finding], out: TextIO) -> None:
    """Each finding with its fix, then the count of problems and notes (every doctor report)."""
    for f in findings:
        print(f"{f.severity.upper():8} {f.code}: {f.message}", file=out)
        print(f"{'':8} fix: {f.fix}", file=out)
    problems = [f for f in findings if f.severity != "info"]
    print(f"{len(problems)} problem(s), {len(findings) - len(problems)} note(s).", file=out)
