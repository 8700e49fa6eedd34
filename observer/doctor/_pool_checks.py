"""Compare a pool's settings and a deployment's shape with the PostgreSQL server's limits."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.pool import Pool

from observer._compat.sqlalchemy import max_overflow, pool_pre_ping, pool_recycle, pool_timeout
from observer.server._findings import Finding
from observer.server._view import Activity, ServerSettings

# SQLAlchemy's own defaults (create_engine): what a pool is when nothing was said.
DEFAULT_POOL_SIZE = 5
DEFAULT_MAX_OVERFLOW = 10
DEFAULT_POOL_TIMEOUT = 30.0
DEFAULT_REQUEST_TIMEOUT = 30.0
# Linux's net.ipv4.tcp_keepalive_time: what tcp_keepalives_idle = 0 means on most servers.
OS_KEEPALIVE_IDLE = 7200.0


@dataclass(frozen=True)
class PoolSettings:
    """A pool's configuration. ``pool_size=None`` means the pool has no size (NullPool)."""

    pool_class: str = "QueuePool"
    pool_size: int | None = DEFAULT_POOL_SIZE
    max_overflow: int = DEFAULT_MAX_OVERFLOW
    pool_recycle: float | None = None
    pool_timeout: float | None = DEFAULT_POOL_TIMEOUT
    pool_pre_ping: bool = False

    def __post_init__(self) -> None:
        if self.pool_size is not None and self.pool_size < 0:
            raise ValueError(
                f"pool_size must be >= 0 (got {self.pool_size}); it is how many connections "
                "each process keeps open"
            )
        if self.max_overflow < -1:
            raise ValueError(
                f"max_overflow must be >= -1 (got {self.max_overflow}); -1 means unbounded, "
                "otherwise it is how many connections may open beyond pool_size"
            )
        if self.pool_recycle is not None and self.pool_recycle <= 0:
            raise ValueError(
                f"pool_recycle must be > 0 seconds (got {self.pool_recycle}); leave it out "
                "(or -1 on the command line) to mean 'never recycle'"
            )
        if self.pool_timeout is not None and self.pool_timeout <= 0:
            raise ValueError(
                f"pool_timeout must be > 0 seconds (got {self.pool_timeout}); it is how long "
                "a checkout waits for a free connection"
            )

    @property
    def max_connections(self) -> int | None:
        """Most connections one process can open; None when unbounded."""
        if self.pool_size is None or self.max_overflow < 0:
            return None
        return self.pool_size + self.max_overflow


@dataclass(frozen=True)
class Deployment:
    """How many processes run the pool, and how long a request may take."""

    workers: int = 1
    replicas: int = 1
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    # Idle timeout of a load balancer, NAT or firewall between app and database, if any.
    network_idle_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(
                f"workers must be >= 1 (got {self.workers}); it is the number of worker "
                "processes per replica (uvicorn/gunicorn --workers), each with its own pool"
            )
        if self.replicas < 1:
            raise ValueError(
                f"replicas must be >= 1 (got {self.replicas}); it is the number of app "
                "instances (containers, pods, hosts) sharing the database"
            )
        if self.request_timeout <= 0:
            raise ValueError(
                f"request_timeout must be > 0 seconds (got {self.request_timeout}); it is how "
                "long a client or proxy waits for a response"
            )
        if self.network_idle_timeout is not None and self.network_idle_timeout <= 0:
            raise ValueError(
                f"network_idle_timeout must be > 0 seconds (got {self.network_idle_timeout}); "
                "it is how long a load balancer, NAT or firewall keeps an idle connection"
            )

    @property
    def processes(self) -> int:
        """Processes that each hold a pool."""
        return self.workers * self.replicas


def pool_settings_of(pool: Pool) -> PoolSettings:
    """Read a live pool's configuration (QueuePool, AsyncAdaptedQueuePool, NullPool, ...)."""
    overflow = max_overflow(pool)
    size_method = _size_method(pool)
    pool_size: int | None
    if size_method is not None and overflow is not None:  # QueuePool and its subclasses
        pool_size = int(size_method())
    else:
        overflow = 0
        # NullPool opens one connection per checkout; SingletonThreadPool one per thread
        pool_size = 1 if type(pool).__name__ in {"StaticPool", "AssertionPool"} else None
    return PoolSettings(
        pool_class=type(pool).__name__,
        pool_size=pool_size,
        max_overflow=overflow,
        pool_recycle=pool_recycle(pool),
        pool_timeout=pool_timeout(pool),
        pool_pre_ping=pool_pre_ping(pool),
    )


def _size_method(pool: Pool) -> Callable[[], int] | None:
    """QueuePool's ``size()``, read defensively (a subclass may break it)."""
    try:
        method = getattr(pool, "size", None)
    except Exception:
        return None
    return method if callable(method) else None


def _s(seconds: float | None) -> str:
    if seconds is None:
        return "off"
    return f"{seconds:g}s"


def check_settings(
    pool: PoolSettings, deployment: Deployment, server: ServerSettings
) -> list[Finding]:
    """Findings about the configuration: what will break, and when."""
    found = (check(pool, deployment, server) for check in _SETTINGS_CHECKS)
    return [finding for finding in found if finding is not None]


def _recycle_vs_idle_session_timeout(
    pool: PoolSettings, deployment: Deployment, server: ServerSettings
) -> Finding | None:
    idle = server.idle_session_timeout
    if not idle or (pool.pool_recycle is not None and pool.pool_recycle < idle):
        return None
    suggest = max(1, math.floor(idle * 0.9))
    consequence = (
        "pool_pre_ping replaces them at checkout, at the price of a reconnect"
        if pool.pool_pre_ping
        else "the next checkout gets a dead connection and its request fails"
    )
    return Finding(
        "pool_recycle_vs_idle_session_timeout",
        "warning" if pool.pool_pre_ping else "error",
        f"the server closes sessions idle for {_s(idle)} (idle_session_timeout) but "
        f"pool_recycle is {_s(pool.pool_recycle)}: connections resting in the pool "
        f"longer than that are closed under it; {consequence}",
        f"set pool_recycle={suggest} (below idle_session_timeout) and "
        "pool_pre_ping=True, or raise idle_session_timeout for the app's role",
    )


def _recycle_vs_network_idle_timeout(
    pool: PoolSettings, deployment: Deployment, server: ServerSettings
) -> Finding | None:
    network = deployment.network_idle_timeout
    keepalive = server.tcp_keepalives_idle or OS_KEEPALIVE_IDLE
    if (
        not network
        or keepalive < network
        or (pool.pool_recycle is not None and pool.pool_recycle < network)
    ):
        return None
    suggest = max(1, math.floor(network * 0.9))
    return Finding(
        "pool_recycle_vs_network_idle_timeout",
        "warning" if pool.pool_pre_ping else "error",
        f"something between app and database drops connections idle for {_s(network)} "
        f"but pool_recycle is {_s(pool.pool_recycle)} and the server's TCP keepalives "
        f"start after {_s(keepalive)} (tcp_keepalives_idle): a connection resting in "
        "the pool is dropped silently, and the next checkout hangs or fails",
        f"set pool_recycle={suggest} and pool_pre_ping=True, or tcp_keepalives_idle "
        f"below {_s(network)} on the server",
    )


def _in_transaction_timeout_vs_request_timeout(
    pool: PoolSettings, deployment: Deployment, server: ServerSettings
) -> Finding | None:
    in_tx = server.idle_in_transaction_session_timeout
    if not in_tx or deployment.request_timeout < in_tx:
        return None
    return Finding(
        "idle_in_transaction_session_timeout_vs_request_timeout",
        "warning",
        f"the server ends sessions idle in a transaction for {_s(in_tx)} "
        "(idle_in_transaction_session_timeout) but a request may run for "
        f"{_s(deployment.request_timeout)}: a session kept open across a slow await "
        "loses its connection mid-request",
        "commit or close the session before slow awaits (sessions left open show in "
        "sqlalchemy_orm_session_leaks_total), or keep the request timeout below "
        "idle_in_transaction_session_timeout",
    )


def _connections_vs_server_limit(
    pool: PoolSettings, deployment: Deployment, server: ServerSettings
) -> Finding | None:
    available = server.available_connections
    per_process = pool.max_connections
    reserved = server.superuser_reserved_connections + server.reserved_connections
    limit = f"max_connections {server.max_connections} - {reserved} reserved = {available}"
    if per_process is None:
        return Finding(
            "connections_unbounded",
            "error",
            f"{pool.pool_class} with pool_size={pool.pool_size}, "
            f"max_overflow={pool.max_overflow} opens as many connections as there are "
            f"concurrent requests; the server allows {limit}",
            f"bound the pool: pool_size + max_overflow <= "
            f"{max(available // deployment.processes, 0)} per process "
            f"({deployment.workers} workers x {deployment.replicas} replicas)",
        )
    total = per_process * deployment.processes
    if total <= available:
        return None
    cap = available // deployment.processes
    fix = (
        f"keep pool_size + max_overflow <= {cap} per process"
        if cap >= 1
        else ("run fewer processes per database")
    )
    return Finding(
        "connections_exceed_server_limit",
        "error",
        f"(pool_size {pool.pool_size} + max_overflow {pool.max_overflow}) x "
        f"{deployment.workers} workers x {deployment.replicas} replicas = {total} "
        f"connections at peak, but the server allows {limit}: at peak, new "
        "connections fail with 'too many clients already'",
        f"{fix}, put PgBouncer in front, or raise max_connections",
    )


def _pre_ping_off(
    pool: PoolSettings, deployment: Deployment, server: ServerSettings
) -> Finding | None:
    if pool.pool_pre_ping:
        return None
    return Finding(
        "pool_pre_ping_off",
        "warning",
        "pool_pre_ping is off: a connection closed by the server or the network "
        "(restart, failover, idle timeout, pg_terminate_backend) fails the first "
        "request that checks it out",
        "create the engine with pool_pre_ping=True (one round trip per checkout)",
    )


def _pool_timeout_vs_request_timeout(
    pool: PoolSettings, deployment: Deployment, server: ServerSettings
) -> Finding | None:
    if pool.pool_timeout is None or pool.pool_timeout < deployment.request_timeout:
        return None
    suggest = max(1, math.floor(deployment.request_timeout / 3))
    return Finding(
        "pool_timeout_vs_request_timeout",
        "warning",
        f"pool_timeout is {_s(pool.pool_timeout)} and requests time out after "
        f"{_s(deployment.request_timeout)}: when the pool is exhausted, requests wait "
        "until the client gives up instead of failing fast with 'QueuePool limit "
        "reached'",
        f"set pool_timeout={suggest} (well below the request timeout)",
    )


def _statement_timeout_off(
    pool: PoolSettings, deployment: Deployment, server: ServerSettings
) -> Finding | None:
    if server.statement_timeout != 0:
        return None
    return Finding(
        "statement_timeout_off",
        "info",
        "statement_timeout is off on the server: a runaway query holds its "
        "connection (and its locks) until it ends",
        "set statement_timeout for the app's role (ALTER ROLE ... SET "
        "statement_timeout = '30s') or per engine (connect_args server_settings)",
    )


# In the order the findings are reported.
_SETTINGS_CHECKS: tuple[
    Callable[[PoolSettings, Deployment, ServerSettings], Finding | None], ...
] = (
    _recycle_vs_idle_session_timeout,
    _recycle_vs_network_idle_timeout,
    _in_transaction_timeout_vs_request_timeout,
    _connections_vs_server_limit,
    _pre_ping_off,
    _pool_timeout_vs_request_timeout,
    _statement_timeout_off,
)


def check_activity(activity: Activity) -> list[Finding]:
    """Facts about the server right now (informational: they do not fail a deploy)."""
    findings: list[Finding] = []
    if activity.idle_in_transaction:
        findings.append(
            Finding(
                "idle_in_transaction_now",
                "info",
                f"{activity.idle_in_transaction} connection(s) of application_name "
                f"'{activity.application_name}' are idle in a transaction, the oldest for "
                f"{activity.idle_in_transaction_max_seconds:.1f}s: they hold a pool slot, "
                "and locks, while the app does something else",
                "look for sessions kept open across slow awaits "
                "(sqlalchemy_orm_session_leaks_total, the sidecar's "
                "pg_observer_idle_in_transaction_max_seconds)",
            )
        )
    waiting = sum(n for n, _ in activity.lock_waits.values())
    if waiting:
        longest = max(w for _, w in activity.lock_waits.values())
        where = ", ".join(f"{db}: {n}" for db, (n, _) in sorted(activity.lock_waits.items()) if n)
        findings.append(
            Finding(
                "lock_waits_now",
                "info",
                f"{waiting} backend(s) are waiting on locks ({where}), the longest for "
                f"{longest:.1f}s",
                "find the blocker with SELECT pid, pg_blocking_pids(pid), query FROM "
                "pg_stat_activity WHERE wait_event_type = 'Lock'; run migrations with "
                "lock_timeout (observer.alembic.run_migrations sets it: docs/alembic.md)",
            )
        )
    return findings
