"""What ``observer doctor --prometheus`` found: sizes per pool, the server's room, findings,
as JSON and as text for a person."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from observer.doctor._history import FleetHistory
from observer.doctor._report import EXIT_FINDINGS, EXIT_OK, print_findings
from observer.doctor._sizing import ServerRoom, Sizing, largest_replicas, size_pool
from observer.server._findings import SEVERITY_RANK, Finding


@dataclass(frozen=True)
class SizingReport:
    """The history read, the sizes recommended, and what is wrong with today's."""

    prometheus: str  # the API's URL, userinfo masked
    range: str  # as given (7d)
    history: FleetHistory
    sizings: list[Sizing]
    server: ServerRoom | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def per_process(self) -> int:
        """Connections one process may open with the recommended sizes, all its pools."""
        return sum(s.max_connections for s in self.sizings)

    @property
    def processes(self) -> int:
        """Processes of the fleet at its largest: replicas x workers."""
        return self.history.replicas * self.history.workers

    @property
    def largest_replicas(self) -> int | None:
        """Replicas the server can take at the recommended sizes; None without its limits."""
        if self.server is None:
            return None
        return largest_replicas(self.server, self.history.workers, self.per_process)

    def exit_code(self, fail_on: str = "warning") -> int:
        """1 when a finding is at least as severe as ``fail_on``, else 0."""
        threshold = SEVERITY_RANK[fail_on]
        bad = any(SEVERITY_RANK[f.severity] >= threshold for f in self.findings)
        return EXIT_FINDINGS if bad else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        h = self.history
        pools = []
        for sizing, pool in zip(self.sizings, h.pools, strict=True):
            pools.append(
                {
                    "pool": sizing.pool,
                    "recommended": {
                        "pool_size": sizing.pool_size,
                        "max_overflow": sizing.max_overflow,
                        "pool_timeout": sizing.pool_timeout,
                        "max_connections": sizing.max_connections,
                    },
                    "current": {
                        "pool_size": pool.pool_size,
                        "max_connections": pool.max_connections,
                    },
                    "peak": {**asdict(pool.peak), "concurrency": pool.peak.concurrency},
                    "burst": sizing.burst,
                    "observed": {
                        "max_checked_out": pool.max_checked_out,
                        "max_waiting": pool.max_waiting,
                        "timeouts": pool.timeouts,
                        "hold_p99_seconds": pool.hold_p99,
                        "wait_p99_seconds": pool.wait_p99,
                    },
                    "reasons": sizing.reasons,
                }
            )
        return {
            "prometheus": self.prometheus,
            "job": h.job,
            "range": self.range,
            "start": h.start,
            "end": h.end,
            "window_seconds": h.window,
            "replicas": h.replicas,
            "workers": h.workers,
            "pools": pools,
            "idle_pools": h.idle_pools,
            "routes": [asdict(r) for r in h.routes],
            "connections_per_process": self.per_process,
            "server": None
            if self.server is None
            else {**asdict(self.server), "available": self.server.available},
            "largest_replicas": self.largest_replicas,
            "findings": [asdict(f) for f in self.findings],
        }


def build_sizing_report(
    prometheus: str,
    range_text: str,
    history: FleetHistory,
    request_timeout: float,
    server: ServerRoom | None = None,
) -> SizingReport:
    """Size each pool of ``history`` and judge today's settings and the fleet against the
    server (``server``: from the database; else the sidecar's series, when Prometheus has them)."""
    sizings = [size_pool(pool, request_timeout) for pool in history.pools]
    report = SizingReport(prometheus, range_text, history, sizings, server or history.server)
    findings = _pool_findings(report) + _server_findings(report)
    findings.sort(key=lambda f: -SEVERITY_RANK[f.severity])
    return SizingReport(prometheus, range_text, history, sizings, report.server, findings)


def _pool_findings(report: SizingReport) -> list[Finding]:
    found = []
    for sizing, pool in zip(report.sizings, report.history.pools, strict=True):
        name = f"pool {pool.pool!r}"
        if pool.timeouts > 0:
            found.append(
                Finding(
                    "checkout_timeouts_in_range",
                    "warning",
                    f"{name}: {pool.timeouts:.0f} checkout(s) timed out in the last "
                    f"{report.range} (QueuePool limit reached): requests failed for want of a "
                    "connection",
                    f"pool_size={sizing.pool_size}, max_overflow={sizing.max_overflow} per "
                    "process (below), or find the routes holding connections longest",
                )
            )
        current = pool.max_connections
        if current is not None and 0 <= current < sizing.max_connections:
            found.append(
                Finding(
                    "pool_smaller_than_peak",
                    "warning",
                    f"{name}: each process may open {current} connections, but its busiest "
                    f"window needs {sizing.max_connections} (bursts of {sizing.burst:.3g} with "
                    "headroom): at such a peak requests wait for connections",
                    f"pool_size={sizing.pool_size}, max_overflow={sizing.max_overflow}",
                )
            )
        if pool.pool_size is not None and pool.pool_size > 2 * sizing.pool_size:
            found.append(
                Finding(
                    "pool_larger_than_peak",
                    "info",
                    f"{name}: pool_size is {pool.pool_size}, more than twice what its busiest "
                    f"window used ({sizing.concurrency:.3g} on average): idle connections cost "
                    "server memory, and a restart opens them all at once",
                    f"pool_size={sizing.pool_size}, max_overflow={sizing.max_overflow}",
                )
            )
    return found


def _server_findings(report: SizingReport) -> list[Finding]:
    server, h = report.server, report.history
    if server is None:
        return []
    fleet = report.per_process * report.processes
    if fleet <= server.available:
        return []
    return [
        Finding(
            "fleet_exceeds_server_limit",
            "error",
            f"at the recommended sizes, {h.replicas} replica(s) x {h.workers} worker(s) x "
            f"{report.per_process} connections = {fleet}, but the server allows "
            f"{server.available} (max_connections {server.max_connections} - "
            f"{server.reserved} reserved): at peak, connections fail with 'too many clients'",
            f"run at most {report.largest_replicas} replica(s), put PgBouncer in front, or "
            "raise max_connections",
        )
    ]


def _when(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_sizing(report: SizingReport, out: TextIO) -> None:
    """The human-readable report: the numbers, each with its reasons, then the findings."""
    h = report.history
    print(f"pool-observer doctor: sizing from {report.prometheus}, job {h.job!r}", file=out)
    print(
        f"  history  {_when(h.start)} to {_when(h.end)} ({report.range}), rates over "
        f"{h.window / 60:g} min windows; {h.replicas} replica(s) x {h.workers} worker(s) at "
        "most",
        file=out,
    )
    for sizing in report.sizings:
        print(
            f"\n  pool {sizing.pool!r}: pool_size={sizing.pool_size} "
            f"max_overflow={sizing.max_overflow} pool_timeout={sizing.pool_timeout:g} "
            "(per process)",
            file=out,
        )
        for reason in sizing.reasons:
            print(f"    - {reason}", file=out)
    if h.idle_pools:
        print(f"\n  idle     no checkout in range: {', '.join(h.idle_pools)}", file=out)
    if h.routes:
        print("\n  routes in the busiest window (connections in use, requests/s):", file=out)
        for r in h.routes:
            print(f"    {r.connections:8.3g}  {r.requests_per_second:8.3g}/s  {r.route}", file=out)
    print(file=out)
    if report.server is None:
        print(
            "  server   limits unknown: give DATABASE_URL (or run the sidecar, whose "
            "pg_settings_max_connections says) for the largest replica count",
            file=out,
        )
    else:
        s = report.server
        print(
            f"  server   max_connections {s.max_connections} - {s.reserved} reserved = "
            f"{s.available} (from {s.source}); {report.per_process} connections per process x "
            f"{h.workers} worker(s): at most {report.largest_replicas} replica(s)",
            file=out,
        )
    print(file=out)
    print_findings(report.findings, out)
