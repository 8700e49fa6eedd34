"""The sidecar exports the server's connection limits, labelled with the server's host:port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from observer.server._label import server_label
from observer.sidecar import Sidecar, SidecarConfig
from tests.helpers import require
from tests.helpers.pgcluster import PgCluster, available
from tests.helpers.scrape import scrape, value, wait_for


@pytest.mark.parametrize(
    ("url", "label"),
    [
        ("postgresql+asyncpg://app:s3cret@db.internal:6432/app", "db.internal:6432"),
        ("postgresql://app@db/app", "db:5432"),
        ("postgresql://app:pw@10.0.0.7/app?sslmode=require&password=x", "10.0.0.7:5432"),
        ("postgresql://app@[2001:db8::1]:5433/app", "[2001:db8::1]:5433"),
        ("postgresql://app@[2001:db8::1]/app", "[2001:db8::1]:5432"),
        ("postgresql://app@h1:5432,h2:5433/app", "h1:5432,h2:5433"),
        ("postgresql:///app", ""),
        ("postgresql://app:p@ss/word@db/app", ""),  # unreadable without guessing: no label
    ],
)
def test_the_server_label_is_host_and_port_never_a_credential(url: str, label: str) -> None:
    """host:port of the URL, PostgreSQL's port when none is given, several hosts as written;
    no host (a socket) or a URL that cannot be read without guessing gives no server."""
    assert server_label(url) == label


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    """A throwaway server with a small, known connection limit."""
    require(available(), "PostgreSQL server binaries (initdb, pg_ctl) are not available")
    with PgCluster(settings={"max_connections": "17", "superuser_reserved_connections": "2"}) as pg:
        yield pg


@pytest.mark.postgres
def test_the_server_connection_limits_are_exported_with_the_server_label(
    cluster: PgCluster,
) -> None:
    """max_connections and the reserved slots of the polled server, as pg_settings_* gauges
    labelled server="127.0.0.1:<port>" (the password of the URL appears nowhere)."""
    config = SidecarConfig(
        address="127.0.0.1",
        port=0,
        database_url=cluster.url(password="Fleet-Secret-PW"),
        poll_interval=0.1,
        statement_timeout_ms=100,
        connect_timeout=2,
    )
    with Sidecar(config) as sidecar:
        url = f"http://127.0.0.1:{sidecar.port}/metrics"
        server = f"127.0.0.1:{cluster.port}"
        samples = wait_for(
            url,
            lambda s: (
                value(s, "pg_up") == 1
                and ("pg_settings_max_connections", (("server", server),)) in s
            ),
        )
        settings = {
            name: v for (name, labels), v in samples.items() if name.startswith("pg_settings_")
        }
        assert settings == {
            "pg_settings_max_connections": 17,
            "pg_settings_superuser_reserved_connections": 2,
            "pg_settings_reserved_connections": 0,  # PostgreSQL 15 has no such setting
        }
        assert {labels for (name, labels) in samples if name.startswith("pg_settings_")} == {
            (("server", server),)
        }
        cluster.stop()
        down = wait_for(url, lambda s: value(s, "pg_up") == 0, what="pg_up 0")
        # No stale limits while the server is unreachable.
        assert not [name for name, _ in down if name.startswith("pg_settings_")]
        assert "Fleet-Secret-PW" not in str(scrape(url))
