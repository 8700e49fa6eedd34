"""Options: keyword arguments and OBSERVER_* variables, validated with errors that say the fix."""

from __future__ import annotations

import pytest

from observer import ConfigurationError, Observer, Settings
from observer._option_rows import OptionRow, option_rows
from observer.settings import Options


def test_defaults() -> None:
    """The defaults are the documented ones."""
    s = Settings.from_options({}, environ={})
    assert s.metrics_path == "/metrics"
    assert s.leak_threshold_seconds == 30.0
    assert s.sweep_interval_seconds == 1.0
    assert s.capture_origin is True
    assert s.application_name is None  # the app's own name where known (issue #13 item 4)
    assert s.max_routes == 200
    assert s.metrics_token is None
    assert s.metrics_port is None
    assert s.metrics_host == "127.0.0.1"


def test_environment_variables_are_read_and_keywords_win() -> None:
    """OBSERVER_<NAME> sets an option; a keyword argument overrides the environment."""
    environ = {
        "OBSERVER_LEAK_THRESHOLD_SECONDS": "12.5",
        "OBSERVER_CAPTURE_ORIGIN": "false",
        "OBSERVER_METRICS_PATH": "none",
        "OBSERVER_MAX_ROUTES": "50",
        "OBSERVER_APPLICATION_NAME": "billing",
        "OBSERVER_METRICS_PORT": "9464",
        "OBSERVER_METRICS_TOKEN": "s3cret-s3cret-s3cret",
        "OBSERVER_METRICS_HOST": "0.0.0.0",
    }
    s = Settings.from_options({"max_routes": 10}, environ=environ)
    assert s.leak_threshold_seconds == 12.5
    assert s.capture_origin is False
    assert s.metrics_path is None
    assert s.application_name == "billing"
    assert s.max_routes == 10
    assert (s.metrics_port, s.metrics_token, s.metrics_host) == (
        9464,
        "s3cret-s3cret-s3cret",
        "0.0.0.0",
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"leak_threshold_seconds": -1},
            r"leak_threshold_seconds must be a number of seconds from 0.01 to 86400 \(got -1\)",
        ),
        ({"leak_threshold_seconds": 0}, "leak_threshold_seconds must be a number of seconds"),
        ({"sweep_interval_seconds": "1"}, "sweep_interval_seconds must be a number of seconds"),
        ({"metrics_path": "metrics"}, "metrics_path must be a path starting with '/'"),
        ({"capture_origin": "yes"}, "capture_origin must be True or False"),
        ({"application_name": "x" * 64}, "application_name must be printable ASCII of at most 63"),
        ({"max_routes": 0}, "max_routes must be a whole number >= 1"),
        ({"leak_treshold_seconds": 5}, "unknown option 'leak_treshold_seconds'; did you mean"),
        ({"metrics_token": ""}, r"^metrics_token is empty \(at least 16 printable ASCII"),
        ({"metrics_token": "two words and more"}, "^metrics_token holds whitespace, control or"),
        ({"metrics_token": 1234}, r"^metrics_token must be a string \(got a int\)"),
        ({"metrics_token": "x" * 15}, "^metrics_token has 15 characters, fewer than 16"),
        ({"metrics_token": "tab\there-and-long"}, "^metrics_token holds whitespace, control"),
        ({"metrics_port": -1}, r"metrics_port must be a port number from 0 to 65535 \(got -1\)"),
        ({"metrics_port": 70000}, "metrics_port must be a port number from 0 to 65535"),
        ({"metrics_port": "9464"}, "metrics_port must be a port number"),
        ({"metrics_host": ""}, "metrics_host must be an address to listen on"),
        ({"max_routes": -5}, "max_routes must be a whole number >= 1"),
        ({"sweep_interval_seconds": -0.5}, "sweep_interval_seconds must be a number of seconds"),
        ({"application_name": 7}, "application_name must be printable ASCII"),
    ],
)
def test_bad_options_fail_with_the_option_and_the_fix(
    options: dict[str, object], message: str
) -> None:
    """Each invalid value fails at once, naming the option."""
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_options(options, environ={})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "OBSERVER_LEAK_THRESHOLD_SECONDS",
            "soon",
            "OBSERVER_LEAK_THRESHOLD_SECONDS must be a number",
        ),
        ("OBSERVER_CAPTURE_ORIGIN", "maybe", "OBSERVER_CAPTURE_ORIGIN must be true or false"),
        ("OBSERVER_MAX_ROUTES", "1.5", "OBSERVER_MAX_ROUTES must be a whole number"),
        ("OBSERVER_SWEEP_INTERVAL_SECONDS", "-2", "sweep_interval_seconds must be a number of"),
        ("OBSERVER_METRICS_PORT", "metrics", "OBSERVER_METRICS_PORT must be a whole number"),
        ("OBSERVER_METRICS_PORT", "99999", "metrics_port must be a port number from 0 to 65535"),
    ],
)
def test_bad_environment_values_name_the_variable(variable: str, value: str, message: str) -> None:
    """A wrong OBSERVER_* value fails at startup with the variable's name."""
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_options({}, environ={variable: value})


def test_observer_validates_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """Observer() reads the environment and fails before touching any registry."""
    monkeypatch.setenv("OBSERVER_LEAK_THRESHOLD_SECONDS", "-5")
    with pytest.raises(ConfigurationError, match="leak_threshold_seconds"):
        Observer()


def test_options_typeddict_matches_the_settings_fields() -> None:
    """Every Settings field is a keyword option, and nothing else is."""
    import dataclasses

    assert set(Options.__annotations__) == {f.name for f in dataclasses.fields(Settings)}


def test_option_rows_come_from_the_settings_fields_and_their_docstrings() -> None:
    """The reference's option rows are the Settings fields in order, each with its variable,
    annotation, default and attribute docstring (one line per source line, dedented)."""
    import dataclasses

    rows = option_rows()
    assert [row.name for row in rows] == [f.name for f in dataclasses.fields(Settings)]
    assert [row.default for row in rows] == [getattr(Settings(), row.name) for row in rows]
    by_name = {row.name: row for row in rows}
    assert by_name["max_routes"] == OptionRow(
        name="max_routes",
        env_var="OBSERVER_MAX_ROUTES",
        type="int",
        default=200,
        doc="Most distinct route label values; further routes are counted as ``other``.",
    )
    assert by_name["metrics_token"] == OptionRow(
        name="metrics_token",
        env_var="OBSERVER_METRICS_TOKEN",
        type="str | None",
        default=None,
        doc="Bearer token every metrics request must carry "
        "(``Authorization: Bearer <token>``), on\n``metrics_path`` and on ``metrics_port``, else "
        "401; never shown in ``repr`` or logs;\n``None``: no token asked. At least 16 printable "
        "ASCII characters without spaces; an empty\n``OBSERVER_METRICS_TOKEN`` (or ``none``, "
        "``off``) is an error: unset it to serve without.",
    )
    assert all(row.doc and row.env_var == "OBSERVER_" + row.name.upper() for row in rows)


def test_the_first_wrong_option_in_field_order_is_reported() -> None:
    """With several wrong options, the validators run in order and the first one fails."""
    with pytest.raises(ConfigurationError, match=r"^metrics_path must be a path"):
        Settings(metrics_path="metrics", max_routes=0, metrics_host="")
    with pytest.raises(ConfigurationError, match=r"^max_routes must be a whole number"):
        Settings(max_routes=0, metrics_host="")


def test_watch_rejects_what_is_not_an_engine(registry: object) -> None:
    """watch() names what it got and what it needs."""
    from prometheus_client import CollectorRegistry

    obs = Observer(registry=CollectorRegistry())
    try:
        with pytest.raises(
            ConfigurationError, match="expected a SQLAlchemy Engine or AsyncEngine, got str"
        ):
            obs.watch("postgresql://db/app")
    finally:
        obs.close()
