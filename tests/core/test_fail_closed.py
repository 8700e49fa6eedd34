"""Security options fail closed: a token given but empty, off or too weak, and a misspelled
OBSERVER_* variable, stop startup with an error naming them, never a silent "auth off"."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from observer import ConfigurationError, Observer, Settings
from observer._environment import OWNED_PREFIXES, SHARED
from observer._option_rows import option_rows
from observer.alembic._options import MigrationOptions

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "0123456789abcdef-token"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "OBSERVER_METRICS_TOKEN is set to an empty value: unset the variable to disable "
             "auth, or set it to the token"),
        ("   ", "OBSERVER_METRICS_TOKEN is set to an empty value: unset the variable"),
        ("none", "OBSERVER_METRICS_TOKEN is set to 'none': unset the variable to disable auth"),
        ("off", "OBSERVER_METRICS_TOKEN is set to 'off': unset the variable to disable auth"),
        ("short-token", "OBSERVER_METRICS_TOKEN has 11 characters, fewer than 16: use a random"),
        ("sixteen chars ok", "OBSERVER_METRICS_TOKEN holds whitespace, control or non-ASCII"),
        ("0123456789abcdef\x07", "OBSERVER_METRICS_TOKEN holds whitespace, control or"),
        ("0123456789abcdéf", "OBSERVER_METRICS_TOKEN holds whitespace, control or non-ASCII"),
    ],
)  # fmt: skip
def test_a_token_variable_that_would_turn_auth_off_is_an_error(value: str, message: str) -> None:
    """``OBSERVER_METRICS_TOKEN`` set but empty (an unset shell variable), ``none``, ``off``,
    short or with blanks or control characters: an error naming the variable, not a silent
    "no auth"; the message never repeats a token it could have been."""
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_options({}, environ={"OBSERVER_METRICS_TOKEN": value})
    assert str(caught.value).startswith(message)
    if len(value.strip()) > 4:
        assert value not in str(caught.value)


def test_a_good_token_variable_and_an_unset_one() -> None:
    """A token of 16+ printable characters is taken as given; no variable means no token."""
    assert Settings.from_options({}, environ={"OBSERVER_METRICS_TOKEN": TOKEN}).metrics_token == (
        TOKEN
    )
    assert Settings.from_options({}, environ={}).metrics_token is None


def test_an_observer_with_an_empty_token_variable_does_not_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Observer() reads the environment: ``OBSERVER_METRICS_TOKEN=""`` stops it at once."""
    monkeypatch.setenv("OBSERVER_METRICS_TOKEN", "")
    with pytest.raises(ConfigurationError, match=r"^OBSERVER_METRICS_TOKEN is set to an empty"):
        Observer(registry=CollectorRegistry())


def test_an_unknown_variable_is_an_error_with_a_did_you_mean() -> None:
    """A misspelled ``OBSERVER_*`` variable is an error naming it, the closest known name and
    every variable the library reads."""
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_options({}, environ={"OBSERVER_METRICS_TOKN": TOKEN})
    message = str(caught.value)
    assert message.startswith(
        "unknown environment variable OBSERVER_METRICS_TOKN; did you mean OBSERVER_METRICS_TOKEN? "
        "(the library reads OBSERVER_APPLICATION_NAME, OBSERVER_CAPTURE_ORIGIN, "
    )
    assert message.endswith(
        "; OBSERVER_SIDECAR_* belong to observer sidecar; OBSERVER_DEMO_* belong to observer "
        "demo; OBSERVER_ALEMBIC_* belong to observer.alembic.run_migrations(); OBSERVER_TEST_* "
        "belong to the test suite); fix its name or unset it"
    )
    assert TOKEN not in message
    with pytest.raises(ConfigurationError, match=r"^unknown environment variable OBSERVER_X;"):
        Settings.from_options({}, environ={"OBSERVER_X": "1"})


def test_variables_of_the_commands_and_tests_are_not_the_library_s_business() -> None:
    """The commands' families, the shared database URL and the test suite's variables pass the
    library's check (each command checks its own family)."""
    environ = {
        "OBSERVER_SIDECAR_PROT": "1",  # the sidecar's to reject
        "OBSERVER_DEMO_DATABASE_URL": "sqlite://",
        "OBSERVER_ALEMBIC_LOCK_TIMEOUT": "3",
        "OBSERVER_TEST_PGHOST": "db",
        "OBSERVER_DATABASE_URL": "postgresql://db/app",
        "OBSERVER_CHAOS_SCALE": "2",
        "OBSERVER_SOAK_SECONDS": "8",
        "OBSERVER_MAX_ROUTES": "7",
        "OBSERVERX": "not ours",
    }
    assert Settings.from_options({}, environ=environ).max_routes == 7


def test_the_alembic_helper_checks_its_own_family() -> None:
    """``OBSERVER_ALEMBIC_*``: a misspelled one is an error naming the right one."""
    with pytest.raises(ConfigurationError) as caught:
        MigrationOptions.resolve(environ={"OBSERVER_ALEMBIC_LOCK_TIMOUT": "3"})
    assert str(caught.value) == (
        "unknown environment variable OBSERVER_ALEMBIC_LOCK_TIMOUT; did you mean "
        "OBSERVER_ALEMBIC_LOCK_TIMEOUT? (run_migrations() reads OBSERVER_ALEMBIC_LOCK_TIMEOUT, "
        "OBSERVER_ALEMBIC_MAX_ATTEMPTS, OBSERVER_ALEMBIC_PUSHGATEWAY, OBSERVER_ALEMBIC_RETRY_FOR, "
        "OBSERVER_ALEMBIC_STATEMENT_TIMEOUT, OBSERVER_ALEMBIC_TEXTFILE); fix its name or unset it"
    )


def test_every_variable_the_project_reads_is_known() -> None:
    """Each ``OBSERVER_*`` name written in the project (code, tests, docs, deploy; not this file) is
    an option's variable, a shared one, or in a family a command owns: the check never rejects
    a variable the project itself reads."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    names: set[str] = set()
    for name in files:
        path = ROOT / name
        if path == Path(__file__).resolve():
            continue  # it misspells variables on purpose
        if path.suffix in {".py", ".md", ".yml", ".yaml", ".toml", ".sh", ""} and path.is_file():
            names |= set(re.findall(r"\bOBSERVER_[A-Z0-9_]*[A-Z0-9]\b", path.read_text("utf-8")))
    library = {row.env_var for row in option_rows()}
    unknown = {n for n in names - library - SHARED if not n.startswith(tuple(OWNED_PREFIXES))}
    assert unknown == set()
    assert len(names) > 20  # the scan sees the project


def test_a_misspelled_variable_stops_the_app_process() -> None:
    """In a real process, ``instrument()`` with a misspelled variable fails at startup."""
    code = "import observer; from fastapi import FastAPI; observer.instrument(FastAPI())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin", "OBSERVER_METRICS_PROT": "9464",
             "PYTHONPATH": ":".join(sys.path)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.rstrip()
        .splitlines()[-1]
        .startswith(
            "observer.settings.ConfigurationError: unknown environment variable "
            "OBSERVER_METRICS_PROT; did you mean OBSERVER_METRICS_PORT?"
        )
    )
