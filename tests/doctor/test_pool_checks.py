"""Reading pool settings from SQLAlchemy pools, defensively, and checking them against a
server's settings (no database needed)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool, Pool, QueuePool, StaticPool

from observer.doctor._pool_checks import Deployment, PoolSettings, check_settings, pool_settings_of
from observer.server._findings import Finding
from observer.server._view import ServerSettings


@pytest.mark.parametrize(
    ("poolclass", "kwargs", "expected"),
    [
        (
            QueuePool,
            {"pool_size": 7, "max_overflow": 3, "pool_recycle": 600, "pool_timeout": 4},
            PoolSettings("QueuePool", 7, 3, 600.0, 4.0, False),
        ),
        (NullPool, {"pool_pre_ping": True}, PoolSettings("NullPool", None, 0, None, None, True)),
        (StaticPool, {}, PoolSettings("StaticPool", 1, 0, None, None, False)),
    ],
)
def test_pool_settings_of_each_pool_class(
    poolclass: type[Pool], kwargs: dict[str, float], expected: PoolSettings
) -> None:
    """Size, overflow, recycle, timeout and pre-ping come from the pool; NullPool has no size."""
    engine = create_engine("postgresql+psycopg://u@127.0.0.1:1/x", poolclass=poolclass, **kwargs)
    assert pool_settings_of(engine.pool) == expected
    assert expected.max_connections == (
        None if expected.pool_size is None else expected.pool_size + expected.max_overflow
    )


def test_unreadable_private_attributes_fall_back_to_defaults() -> None:
    """A pool whose private attributes raise (a future SQLAlchemy) still gives settings."""

    class Odd(QueuePool):
        @property
        def _recycle(self) -> float:  # type: ignore[override]
            raise RuntimeError("gone")

        @_recycle.setter
        def _recycle(self, value: float) -> None:
            pass

    engine = create_engine("postgresql+psycopg://u@127.0.0.1:1/x", poolclass=Odd, pool_size=2)
    settings = pool_settings_of(engine.pool)
    assert (settings.pool_class, settings.pool_size, settings.pool_recycle) == ("Odd", 2, None)


SAFE_SERVER = ServerSettings(
    max_connections=100,
    superuser_reserved_connections=3,
    reserved_connections=0,
    idle_session_timeout=None,
    idle_in_transaction_session_timeout=None,
    statement_timeout=30.0,
    tcp_keepalives_idle=None,
)
SAFE_POOL = PoolSettings(pool_pre_ping=True, pool_timeout=10.0)


def codes(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.code, f.severity) for f in findings]


def test_a_safe_configuration_has_no_findings() -> None:
    """Bounded pool within the server's limit, pre-ping on, short pool timeout, timeouts set."""
    assert check_settings(SAFE_POOL, Deployment(), SAFE_SERVER) == []


@pytest.mark.parametrize(
    ("pool", "deployment", "server", "expected"),
    [
        # idle_session_timeout: recycling at (not below) the timeout is too late
        (
            replace(SAFE_POOL, pool_recycle=60.0),
            Deployment(),
            replace(SAFE_SERVER, idle_session_timeout=60.0),
            [("pool_recycle_vs_idle_session_timeout", "warning")],
        ),
        (
            replace(SAFE_POOL, pool_recycle=59.0),
            Deployment(),
            replace(SAFE_SERVER, idle_session_timeout=60.0),
            [],
        ),
        # a network idle timeout, with keepalives not earlier than it
        (
            replace(SAFE_POOL, pool_pre_ping=False),
            Deployment(network_idle_timeout=300.0),
            replace(SAFE_SERVER, tcp_keepalives_idle=300.0),
            [("pool_recycle_vs_network_idle_timeout", "error"), ("pool_pre_ping_off", "warning")],
        ),
        (
            SAFE_POOL,
            Deployment(network_idle_timeout=300.0),
            replace(SAFE_SERVER, tcp_keepalives_idle=299.0),
            [],
        ),
        # idle_in_transaction_session_timeout not above the request timeout
        (
            SAFE_POOL,
            Deployment(request_timeout=30.0),
            replace(SAFE_SERVER, idle_in_transaction_session_timeout=30.0),
            [("idle_in_transaction_session_timeout_vs_request_timeout", "warning")],
        ),
        (
            SAFE_POOL,
            Deployment(request_timeout=30.0),
            replace(SAFE_SERVER, idle_in_transaction_session_timeout=31.0),
            [],
        ),
        # 97 available: 6 processes x 16 = 96 fit, 97 x 1 fit, 7 x 15 = 105 do not
        (replace(SAFE_POOL, pool_size=6, max_overflow=10), Deployment(workers=6), SAFE_SERVER, []),
        (
            replace(SAFE_POOL, pool_size=5, max_overflow=10),
            Deployment(workers=7),
            SAFE_SERVER,
            [("connections_exceed_server_limit", "error")],
        ),
        (
            replace(SAFE_POOL, max_overflow=-1),
            Deployment(),
            SAFE_SERVER,
            [("connections_unbounded", "error")],
        ),
        # pool_timeout not below the request timeout
        (
            replace(SAFE_POOL, pool_timeout=30.0),
            Deployment(request_timeout=30.0),
            SAFE_SERVER,
            [("pool_timeout_vs_request_timeout", "warning")],
        ),
        (replace(SAFE_POOL, pool_timeout=29.0), Deployment(request_timeout=30.0), SAFE_SERVER, []),
        (
            SAFE_POOL,
            Deployment(),
            replace(SAFE_SERVER, statement_timeout=0.0),
            [("statement_timeout_off", "info")],
        ),
        (SAFE_POOL, Deployment(), replace(SAFE_SERVER, statement_timeout=None), []),
    ],
)
def test_each_settings_check_fires_at_its_boundary_and_not_below(
    pool: PoolSettings, deployment: Deployment, server: ServerSettings, expected: list[Any]
) -> None:
    """Each check of check_settings fires from its threshold on (>=), not just below it."""
    assert codes(check_settings(pool, deployment, server)) == expected


def test_every_settings_finding_at_once_comes_in_a_fixed_order() -> None:
    """With every check failing, the findings come in the documented order, one per check."""
    pool = PoolSettings(pool_size=50, max_overflow=50, pool_timeout=60.0)
    server = replace(
        SAFE_SERVER,
        idle_session_timeout=60.0,
        idle_in_transaction_session_timeout=10.0,
        statement_timeout=0.0,
        tcp_keepalives_idle=600.0,
    )
    deployment = Deployment(workers=2, network_idle_timeout=300.0)
    assert codes(check_settings(pool, deployment, server)) == [
        ("pool_recycle_vs_idle_session_timeout", "error"),
        ("pool_recycle_vs_network_idle_timeout", "error"),
        ("idle_in_transaction_session_timeout_vs_request_timeout", "warning"),
        ("connections_exceed_server_limit", "error"),
        ("pool_pre_ping_off", "warning"),
        ("pool_timeout_vs_request_timeout", "warning"),
        ("statement_timeout_off", "info"),
    ]
