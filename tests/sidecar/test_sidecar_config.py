"""observer sidecar settings: options over OBSERVER_* variables over defaults, each validated."""

from __future__ import annotations

import argparse
import re
import socket
from pathlib import Path

import pytest

from observer.cli import main
from observer.sidecar._config import SidecarConfig, add_arguments, resolve


def parse(*argv: str) -> argparse.Namespace:
    """The sidecar's argparse namespace for ``argv``."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_then_environment_then_options() -> None:
    """Defaults apply when nothing is said; OBSERVER_* variables override them; options win."""
    env = {"PROMETHEUS_MULTIPROC_DIR": "/mp"}
    assert resolve(parse(), env) == SidecarConfig(multiproc_dir="/mp")
    env = {
        "OBSERVER_SIDECAR_ADDRESS": "0.0.0.0",
        "OBSERVER_SIDECAR_PORT": "9300",
        "OBSERVER_DATABASE_URL": "postgresql://fallback@db/app",
        "OBSERVER_APPLICATION_NAME": "shop",
        "OBSERVER_SIDECAR_POLL_INTERVAL": "5",
        "OBSERVER_SIDECAR_STATEMENT_TIMEOUT_MS": "2000",
        "OBSERVER_SIDECAR_CONNECT_TIMEOUT": "3",
        "OBSERVER_SIDECAR_PRUNE_DEAD_WORKERS": "false",
        "OBSERVER_SIDECAR_DATABASES": "app, reports",
    }
    assert resolve(parse(), env) == SidecarConfig(
        address="0.0.0.0",
        port=9300,
        database_url="postgresql://fallback@db/app",
        application_name="shop",
        poll_interval=5.0,
        statement_timeout_ms=2000,
        connect_timeout=3.0,
        multiproc_dir=None,
        prune_dead_workers=False,
        databases=("app", "reports"),
    )
    env["OBSERVER_SIDECAR_DATABASE_URL"] = "postgresql://sidecar@db/app"
    assert resolve(parse(), env).database_url == "postgresql://sidecar@db/app"
    options = parse("--port", "9400", "--database-url", "postgresql://cli@db/app",
                    "--prune-dead-workers", "--databases", "*")  # fmt: skip
    config = resolve(options, env)
    assert (config.port, config.database_url, config.prune_dead_workers, config.databases) == (
        9400,
        "postgresql://cli@db/app",
        True,
        ("*",),
    )
    # the variable's 2000 ms statement timeout does not fit in a 1 s interval given as option
    with pytest.raises(
        ValueError, match="from 1 to 1000 \\(got '2000'\\); at most the poll interval"
    ):
        resolve(parse("--poll-interval", "1"), env)
    # an empty variable counts as unset
    assert resolve(parse(), {**env, "OBSERVER_SIDECAR_PORT": ""}).port == 9188


def test_default_statement_timeout_shrinks_with_a_short_interval() -> None:
    """Without an explicit statement timeout, a 0.5 s interval gets a 500 ms one."""
    config = resolve(parse("--poll-interval", "0.5"), {"PROMETHEUS_MULTIPROC_DIR": "/mp"})
    assert (config.poll_interval, config.statement_timeout_ms) == (0.5, 500)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OBSERVER_SIDECAR_PORT": "http"}, "--port / OBSERVER_SIDECAR_PORT must be a whole number from 0 to 65535 (got 'http'); 0 picks a free port"),  # noqa: E501
        ({"OBSERVER_SIDECAR_PORT": "70000"}, "--port / OBSERVER_SIDECAR_PORT must be a whole number from 0 to 65535 (got '70000')"),  # noqa: E501
        ({"OBSERVER_SIDECAR_POLL_INTERVAL": "0"}, "--poll-interval / OBSERVER_SIDECAR_POLL_INTERVAL must be a number of seconds from 0.1 to 3600 (got '0'); it is how often the sidecar reads pg_stat_activity"),  # noqa: E501
        ({"OBSERVER_SIDECAR_STATEMENT_TIMEOUT_MS": "20000"}, "--statement-timeout-ms / OBSERVER_SIDECAR_STATEMENT_TIMEOUT_MS must be a whole number of milliseconds from 1 to 15000 (got '20000'); at most the poll interval, so that a slow poll ends before the next one"),  # noqa: E501
        ({"OBSERVER_SIDECAR_STATEMENT_TIMEOUT_MS": "0"}, "--statement-timeout-ms / OBSERVER_SIDECAR_STATEMENT_TIMEOUT_MS must be a whole number of milliseconds from 1 to 15000 (got '0')"),  # noqa: E501
        ({"OBSERVER_SIDECAR_CONNECT_TIMEOUT": "-1"}, "--connect-timeout / OBSERVER_SIDECAR_CONNECT_TIMEOUT must be a number of seconds from 0.1 to 300 (got '-1')"),  # noqa: E501
        ({"OBSERVER_SIDECAR_DATABASE_URL": "mysql://u:Secret1@h/db"}, "--database-url / OBSERVER_SIDECAR_DATABASE_URL must be a PostgreSQL URL (got a 'mysql' one): the sidecar polls pg_stat_activity"),  # noqa: E501
        ({"OBSERVER_SIDECAR_DATABASE_URL": "nonsense Secret1"}, "--database-url / OBSERVER_SIDECAR_DATABASE_URL is not a URL; expected postgresql://user:password@host:port/database"),  # noqa: E501
        ({"OBSERVER_SIDECAR_PRUNE_DEAD_WORKERS": "maybe"}, "OBSERVER_SIDECAR_PRUNE_DEAD_WORKERS must be true or false (got 'maybe')"),  # noqa: E501
        ({"OBSERVER_SIDECAR_DATABASES": "app,,reports"}, "--databases / OBSERVER_SIDECAR_DATABASES must be database names separated by commas, or '*' for every database (got 'app,,reports')"),  # noqa: E501
        ({"OBSERVER_SIDECAR_DATABASES": "*,app"}, "--databases / OBSERVER_SIDECAR_DATABASES must be database names separated by commas, or '*' for every database (got '*,app')"),  # noqa: E501
        ({"OBSERVER_SIDECAR_DATABASES": "d" * 64}, "--databases / OBSERVER_SIDECAR_DATABASES must be database names separated by commas, or '*' for every database (got 'ddd"),  # noqa: E501
    ],
    ids=["port-nan", "port-range", "interval", "stmt-long", "stmt-zero", "connect", "mysql", "garbage", "prune", "db-empty", "db-star-mixed", "db-long"],  # noqa: E501
)  # fmt: skip
def test_bad_setting_names_the_option_and_the_variable(env: dict[str, str], message: str) -> None:
    """Each bad value fails with a message naming the option, its variable and the fix."""
    with pytest.raises(ValueError, match="^" + re.escape(message)) as raised:
        resolve(parse(), {"PROMETHEUS_MULTIPROC_DIR": "/mp", **env})
    assert "Secret1" not in str(raised.value)


def test_nothing_to_serve_is_refused() -> None:
    """With neither a database URL nor a multiprocess directory the sidecar refuses to start."""
    with pytest.raises(ValueError, match=r"^nothing to serve: give --database-url"):
        resolve(parse(), {})
    assert resolve(parse(), {}, require_source=False) == SidecarConfig()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--poll-interval=-2"], "observer sidecar: error: --poll-interval must be a number of seconds from 0.1 to 3600 (got '-2')"),  # noqa: E501
        (["--multiproc-dir", "/nonexistent/mp"], "observer sidecar: the multiprocess directory '/nonexistent/mp' does not exist; point --multiproc-dir (or PROMETHEUS_MULTIPROC_DIR) at the directory the app's workers write to"),  # noqa: E501
    ],
)  # fmt: skip
def test_cli_exits_2_on_bad_settings(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    """``observer sidecar`` with a bad setting prints the reason and exits 2 without serving."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp")
    assert main(["sidecar", *argv]) == 2
    assert capsys.readouterr().err.startswith(message)


def test_cli_exits_2_when_the_port_is_taken(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A port already in use is a startup error (exit 2), not a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["sidecar", "--port", str(port), "--multiproc-dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.startswith("observer sidecar: [Errno 98] Address already in use")
