"""The sizing arithmetic at its edges, and the Prometheus URL as doctor reads it (no server)."""

from __future__ import annotations

import pytest

from observer.doctor._prometheus import connect
from observer.doctor._sizing import Peak, PoolHistory, ServerRoom, largest_replicas, size_pool


def _history(
    rate: float,
    hold: float,
    *,
    max_checked_out: float = 0.0,
    max_waiting: float = 0.0,
    hold_p99: float | None = None,
) -> PoolHistory:
    """One pool whose busiest window had ``rate`` checkouts/s held ``hold`` s on average."""
    peak = Peak(time=0.0, instance="app:8000", workers=1, arrival_rate=rate, hold_seconds=hold)
    return PoolHistory(
        "main", peak, max_checked_out=max_checked_out, max_waiting=max_waiting, hold_p99=hold_p99
    )


def test_waiting_seen_beyond_the_random_burst_sets_the_overflow() -> None:
    """4 connections on average (8/s x 0.5 s) burst to 4 + 3 x 2 = 10 by chance, but 20 in use
    and 5 waiting were seen at once: 25 x 1.25 = 32 connections, pool_size 5 (4 x 1.25)."""
    sizing = size_pool(_history(8.0, 0.5, max_checked_out=20, max_waiting=5), 30.0)
    assert (sizing.pool_size, sizing.max_overflow, sizing.max_connections) == (5, 27, 32)
    assert (
        "bursts reach 25 connections (20 in use + 5 waiting, the most seen at once)"
        in (sizing.reasons[2])
    )


def test_random_arrivals_set_the_overflow_when_the_gauges_saw_less() -> None:
    """16 on average: 16 + 3 x 4 = 28 by chance; x 1.25 = 35; pool_size 20."""
    sizing = size_pool(_history(32.0, 0.5, max_checked_out=18), 30.0)
    assert (sizing.pool_size, sizing.max_overflow, sizing.burst) == (20, 15, 28.0)


@pytest.mark.parametrize(
    ("hold_p99", "request_timeout", "timeout", "why"),
    [
        (0.01, 30.0, 1.0, "raised to 1 s so a pause does not turn into errors"),
        (20.0, 30.0, 10.0, "capped at a third of the request timeout (30 s)"),
        (2.0, 30.0, 6.0, "3 x the p99 hold (2 s) = 6 s"),
        (None, 30.0, 10.0, "no hold history to judge by; 10 s"),
        (None, 6.0, 2.0, "no hold history to judge by; 2 s"),
    ],
)
def test_pool_timeout_is_three_p99_holds_between_one_second_and_a_third_of_the_request(
    hold_p99: float | None, request_timeout: float, timeout: float, why: str
) -> None:
    """pool_timeout: 3 x the p99 hold, at least 1 s, at most a third of the request timeout."""
    sizing = size_pool(_history(10.0, 0.1, hold_p99=hold_p99), request_timeout)
    assert sizing.pool_timeout == timeout
    assert why in sizing.reasons[3]


def test_a_nearly_idle_pool_still_gets_one_connection() -> None:
    """0.01 connections on average: pool_size 1, and room for the rare burst."""
    sizing = size_pool(_history(0.1, 0.1), 30.0)
    assert (sizing.pool_size, sizing.max_connections) == (1, 1)


def test_largest_replicas_is_what_fits_in_the_available_connections() -> None:
    """97 available, 2 workers x 25: 1 replica; 40 available: none; 0 per process: an error."""
    assert largest_replicas(ServerRoom(100, 3, "the database"), 2, 25) == 1
    assert largest_replicas(ServerRoom(43, 3, "the database"), 2, 25) == 0
    assert largest_replicas(ServerRoom(1000, 3, "the database"), 4, 10) == 24
    with pytest.raises(ValueError, match=r"per_process must be > 0 connections \(got 0\)"):
        largest_replicas(ServerRoom(100, 3, "the database"), 2, 0)


def test_a_prometheus_url_loses_its_credentials_but_sends_them() -> None:
    """userinfo becomes a basic auth header and *** in what is shown; a trailing / goes."""
    prom = connect("https://bob:s%40cret@prom.example:9443/prom/", timeout=5, environ={})
    assert (prom.base, prom.shown) == (
        "https://prom.example:9443/prom",
        "https://***@prom.example:9443/prom",
    )
    assert prom.headers == {"Authorization": "Basic Ym9iOnNAY3JldA=="}  # bob:s@cret
    assert "s@cret" not in repr(prom)
    assert "Ym9i" not in repr(prom)


def test_a_token_in_the_environment_is_sent_as_a_bearer_token() -> None:
    """$OBSERVER_PROMETHEUS_TOKEN: ``Authorization: Bearer``; an IPv6 host keeps its brackets."""
    prom = connect("http://[::1]:9090", timeout=5, environ={"OBSERVER_PROMETHEUS_TOKEN": "abc"})
    assert (prom.base, prom.shown) == ("http://[::1]:9090", "http://[::1]:9090")
    assert prom.headers == {"Authorization": "Bearer abc"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prometheus:9090", "--prometheus must be an http(s) URL"),
        ("http://", "--prometheus must be an http(s) URL"),
        ("http://prom:99999", "--prometheus must be an http(s) URL"),
        ("http://prom:9090/#x", "--prometheus takes no query or fragment"),
        ("http://pro\tm:9090", "--prometheus must be an http(s) URL"),
    ],
)
def test_a_url_that_is_not_one_is_refused(text: str, message: str) -> None:
    """Not http(s), no host, a bad port, a fragment, a control character: ValueError."""
    with pytest.raises(ValueError, match=r"^" + message.replace("(", r"\(").replace(")", r"\)")):
        connect(text, timeout=5, environ={})


def test_every_metric_doctor_queries_is_in_the_contract() -> None:
    """The names doctor --prometheus reads are the contract's (a rename there breaks here), with
    the type its queries assume; only the sidecar's pg_settings_* may still be planned."""
    from observer.doctor import _history as history
    from observer.metrics._contract import BY_NAME

    expected = {
        "CHECKOUTS": "counter", "TIMEOUTS": "counter", "HOLD": "histogram", "WAIT": "histogram",
        "CHECKED_OUT": "gauge", "WAITING": "gauge", "SIZE": "gauge", "MAX_CONNECTIONS": "gauge",
        "ROUTE_REQUESTS": "counter", "ROUTE_HOLD": "counter", "SERVER_MAX": "gauge",
        "SERVER_RESERVED": "gauge",
    }  # fmt: skip
    found = {const: BY_NAME[getattr(history, const)].type for const in expected}
    assert found == expected
    planned = {c for c in expected if BY_NAME[getattr(history, c)].planned}
    assert planned <= {"SERVER_MAX", "SERVER_RESERVED"}
