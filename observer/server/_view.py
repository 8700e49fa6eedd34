"""What PostgreSQL sees of the app: settings and pg_stat_activity, shared by doctor and sidecar."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from observer.settings import ENV_PREFIX, OTEL_SERVICE_NAME, app_name_or_none

# The name the library sets on the app's connections (observer.settings.Settings), so the
# server view can select them.
DEFAULT_APPLICATION_NAME = ""  # the library sets none unless the app's name is known
APPLICATION_NAME_ENV = ENV_PREFIX + "APPLICATION_NAME"
# ``databases`` of read_activity that means every connectable database of the cluster.
ALL_DATABASES = "*"

# The states postgres_exporter enumerates for pg_stat_activity_count
# (collector/pg_stat_activity.go),
# so that a state with no backend is a 0, not a missing series.
STATES = (
    "active",
    "idle",
    "idle in transaction",
    "idle in transaction (aborted)",
    "fastpath function call",
    "disabled",
)
IDLE_IN_TRANSACTION_STATES = ("idle in transaction", "idle in transaction (aborted)")

# Server settings doctor compares with the pool; missing ones (older servers) read as None.
SETTINGS = (
    "max_connections",
    "superuser_reserved_connections",
    "reserved_connections",
    "idle_session_timeout",
    "idle_in_transaction_session_timeout",
    "statement_timeout",
    "tcp_keepalives_idle",
)

_SETTINGS_SQL = text("SELECT name, setting, unit FROM pg_settings WHERE name = ANY(:names)")

_STATES_SQL = ", ".join(f"('{state}')" for state in STATES)

# Connections of one application_name by database and state, with postgres_exporter's
# max_tx_duration (seconds since xact_start). Every database asked for x state gets a row.
_ACTIVITY_SQL = text(
    f"""
SELECT d.datname AS datname, s.state AS state,
       coalesce(a.n, 0) AS n, coalesce(a.max_tx, 0) AS max_tx
FROM pg_database d
CROSS JOIN (VALUES {_STATES_SQL}) AS s(state)
LEFT JOIN (
    SELECT datname, state, count(*) AS n,
           max(extract(epoch FROM now() - xact_start))::float8 AS max_tx
    FROM pg_stat_activity
    WHERE application_name = :app AND backend_type = 'client backend'
      AND pid <> pg_backend_pid()
    GROUP BY datname, state
) a ON a.datname = d.datname AND a.state = s.state
WHERE d.datallowconn AND NOT d.datistemplate
  AND (:all_databases OR d.datname = ANY(:databases))
ORDER BY 1, 2
"""
)

_APPLICATION_SQL = text(
    """
SELECT
  count(*) FILTER (WHERE state LIKE 'idle in transaction%') AS idle_in_tx,
  coalesce(max(extract(epoch FROM now() - state_change))
           FILTER (WHERE state LIKE 'idle in transaction%'), 0)::float8 AS idle_in_tx_max,
  coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8 AS oldest_tx
FROM pg_stat_activity
WHERE application_name = :app AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""
)

# Backends waiting for a heavyweight lock (a migration's ALTER TABLE queues everyone behind it),
# by database; the wait is counted from the start of the waiting statement.
_LOCKS_SQL = text(
    """
SELECT d.datname AS datname, count(a.pid) AS waiting,
       coalesce(max(extract(epoch FROM now() - a.query_start)), 0)::float8 AS max_wait
FROM pg_database d
LEFT JOIN pg_stat_activity a
  ON a.datname = d.datname AND a.wait_event_type = 'Lock' AND a.backend_type = 'client backend'
WHERE d.datallowconn AND NOT d.datistemplate
  AND (:all_databases OR d.datname = ANY(:databases))
GROUP BY d.datname
ORDER BY 1
"""
)

_TOTAL_SQL = text(
    "SELECT current_database() AS db, count(*) FILTER (WHERE backend_type = 'client backend') AS n "
    "FROM pg_stat_activity"
)


def application_name_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The application_name the library sets on connections, learnt as the library does:
    ``OBSERVER_APPLICATION_NAME``, else ``OTEL_SERVICE_NAME`` (else none: ``""``). An app that
    names its connections otherwise (its FastAPI title, its own setting) needs the option."""
    env = os.environ if environ is None else environ
    if APPLICATION_NAME_ENV in env:
        return env[APPLICATION_NAME_ENV]
    return app_name_or_none(env.get(OTEL_SERVICE_NAME)) or DEFAULT_APPLICATION_NAME


@dataclass(frozen=True)
class ServerSettings:
    """The server settings that decide whether a pool configuration is safe, in seconds."""

    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int
    idle_session_timeout: float | None
    idle_in_transaction_session_timeout: float | None
    statement_timeout: float | None
    tcp_keepalives_idle: float | None

    @property
    def available_connections(self) -> int:
        """Connections ordinary roles may open: max minus the reserved slots."""
        return (
            self.max_connections - self.superuser_reserved_connections - self.reserved_connections
        )


@dataclass(frozen=True)
class Activity:
    """pg_stat_activity for one application_name (and lock waits of every client) right now."""

    application_name: str
    database: str
    # (datname, state) -> (backends, seconds of the oldest transaction among them)
    by_state: Mapping[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    idle_in_transaction: int = 0
    idle_in_transaction_max_seconds: float = 0.0
    oldest_transaction_seconds: float = 0.0
    # datname -> (backends waiting on a lock, seconds of the longest wait)
    lock_waits: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    client_backends: int = 0

    def connections(self, datname: str | None = None) -> dict[str, int]:
        """Backends of this application by state, in one database or all of them."""
        out = dict.fromkeys(STATES, 0)
        for (db, state), (n, _) in self.by_state.items():
            if datname is None or db == datname:
                out[state] += n
        return out


def _seconds(setting: str, unit: str | None) -> float:
    # pg_settings reports these timeouts in "ms" or "s" (its base unit, whatever SET used).
    return float(setting) / 1000.0 if unit == "ms" else float(setting)


def _settings(rows: Sequence[Any]) -> ServerSettings:
    raw = {row.name: (row.setting, row.unit) for row in rows}

    def number(name: str) -> int:
        return int(raw[name][0]) if name in raw else 0

    def seconds(name: str) -> float | None:
        return _seconds(*raw[name]) if name in raw else None

    return ServerSettings(
        max_connections=number("max_connections"),
        superuser_reserved_connections=number("superuser_reserved_connections"),
        reserved_connections=number("reserved_connections"),
        idle_session_timeout=seconds("idle_session_timeout"),
        idle_in_transaction_session_timeout=seconds("idle_in_transaction_session_timeout"),
        statement_timeout=seconds("statement_timeout"),
        tcp_keepalives_idle=seconds("tcp_keepalives_idle"),
    )


def _activity(
    application_name: str,
    total: Any,
    by_state: Sequence[Any],
    app: Any,
    locks: Sequence[Any],
) -> Activity:
    return Activity(
        application_name=application_name,
        database=str(total.db),
        by_state={(r.datname, r.state): (int(r.n), float(r.max_tx)) for r in by_state},
        idle_in_transaction=int(app.idle_in_tx),
        idle_in_transaction_max_seconds=float(app.idle_in_tx_max),
        oldest_transaction_seconds=float(app.oldest_tx),
        lock_waits={r.datname: (int(r.waiting), float(r.max_wait)) for r in locks},
        client_backends=int(total.n),
    )


async def read_settings(conn: AsyncConnection) -> ServerSettings:
    """Read the pool-relevant server settings over an async connection."""
    return _settings((await conn.execute(_SETTINGS_SQL, {"names": list(SETTINGS)})).all())


def read_settings_sync(conn: Connection) -> ServerSettings:
    """Read the pool-relevant server settings over a sync connection."""
    return _settings(conn.execute(_SETTINGS_SQL, {"names": list(SETTINGS)}).all())


def _filter(total: Any, databases: Sequence[str]) -> dict[str, Any]:
    """The database filter's parameters: the connection's database when none is named."""
    return {
        "all_databases": ALL_DATABASES in databases,
        "databases": [name for name in databases if name != ALL_DATABASES] or [str(total.db)],
    }


async def read_activity(
    conn: AsyncConnection, application_name: str, databases: Sequence[str] = ()
) -> Activity:
    """Read what the server sees of ``application_name`` now, over an async connection, in
    ``databases`` (default: the connection's; ``ALL_DATABASES`` for every one)."""
    total = (await conn.execute(_TOTAL_SQL)).one()
    where = _filter(total, databases)
    return _activity(
        application_name,
        total,
        (await conn.execute(_ACTIVITY_SQL, {"app": application_name, **where})).all(),
        (await conn.execute(_APPLICATION_SQL, {"app": application_name})).one(),
        (await conn.execute(_LOCKS_SQL, where)).all(),
    )


def read_activity_sync(
    conn: Connection, application_name: str, databases: Sequence[str] = ()
) -> Activity:
    """Read what the server sees of ``application_name`` now, over a sync connection, in
    ``databases`` (default: the connection's; ``ALL_DATABASES`` for every one)."""
    total = conn.execute(_TOTAL_SQL).one()
    where = _filter(total, databases)
    return _activity(
        application_name,
        total,
        conn.execute(_ACTIVITY_SQL, {"app": application_name, **where}).all(),
        conn.execute(_APPLICATION_SQL, {"app": application_name}).one(),
        conn.execute(_LOCKS_SQL, where).all(),
    )
