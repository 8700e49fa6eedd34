"""The options added for request attribution, logs and tracing: defaults, environment, errors."""

from __future__ import annotations

import re

import pytest

from observer import ConfigurationError, Settings


def test_defaults() -> None:
    """Server-Timing on, request logging off, 1 s grace, 1 s slow checkout, tracing off."""
    settings = Settings()
    assert (
        settings.request_end_grace_seconds,
        settings.server_timing,
        settings.log_requests,
        settings.slow_checkout_seconds,
        settings.tracing,
    ) == (1.0, True, False, 1.0, False)


def test_environment_variables_are_parsed() -> None:
    """OBSERVER_* values become numbers, booleans and None ('off' for an optional number)."""
    settings = Settings.from_options(
        environ={
            "OBSERVER_REQUEST_END_GRACE_SECONDS": "0.2",
            "OBSERVER_SERVER_TIMING": "false",
            "OBSERVER_LOG_REQUESTS": "yes",
            "OBSERVER_SLOW_CHECKOUT_SECONDS": "off",
            "OBSERVER_TRACING": "1",
        }
    )
    assert (
        settings.request_end_grace_seconds,
        settings.server_timing,
        settings.log_requests,
        settings.slow_checkout_seconds,
        settings.tracing,
    ) == (0.2, False, True, None, True)
    assert (
        Settings.from_options(
            environ={"OBSERVER_SLOW_CHECKOUT_SECONDS": "2.5"}
        ).slow_checkout_seconds
        == 2.5
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"request_end_grace_seconds": -1},
            "request_end_grace_seconds must be a number of seconds from 0 to 60 (got -1)",
        ),
        ({"request_end_grace_seconds": "1"}, "request_end_grace_seconds must be a number"),
        ({"request_end_grace_seconds": 61}, "from 0 to 60 (got 61)"),
        (
            {"slow_checkout_seconds": 0},
            "slow_checkout_seconds must be a number of seconds from 0.001 to 3600 (got 0); a "
            "checkout that waits longer is logged as pool.slow_checkout; None: off",
        ),
        ({"slow_checkout_seconds": True}, "slow_checkout_seconds must be a number of seconds"),
        ({"server_timing": "no"}, "server_timing must be True or False (got 'no')"),
        ({"log_requests": 1}, "log_requests must be True or False (got 1)"),
        ({"tracing": None}, "tracing must be True or False (got None)"),
        ({"tracng": True}, "unknown option 'tracng'; did you mean 'tracing'?"),
    ],
)
def test_wrong_values_fail_with_the_option_name(options: dict[str, object], message: str) -> None:
    """A wrong value fails at once, naming the option, the value and what it is for."""
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        Settings.from_options(options, environ={})


def test_zero_grace_is_allowed() -> None:
    """A grace of 0 checks as soon as the app call returned."""
    assert Settings(request_end_grace_seconds=0).request_end_grace_seconds == 0
