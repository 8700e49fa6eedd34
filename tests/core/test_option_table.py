"""Every option validated: one table of good and bad values for each keyword option (and its
``OBSERVER_*`` variable), one for each flag of each command; bad values fail in one line."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import NamedTuple

import pytest

from observer import ConfigurationError, Settings
from observer.cli import build_parser, main

NAN, INF = float("nan"), float("inf")


class Row(NamedTuple):
    """Keyword values accepted, keyword values refused (with a fragment of the message), and the
    same for the text of the option's ``OBSERVER_*`` variable (with the value it reads as)."""

    good: tuple[object, ...]
    bad: tuple[tuple[object, str], ...]
    env_good: tuple[tuple[str, object], ...]
    env_bad: tuple[tuple[str, str], ...]


SECONDS_0_01_TO_3600 = "must be a number of seconds from 0.01 to 3600"
PATH = "must be a path of its own such as /observer"
APP_NAME = "application_name must be printable ASCII of at most 63 bytes, PostgreSQL's limit"

SETTINGS: dict[str, Row] = {
    "metrics_path": Row(
        good=("/metrics", "/internal/metrics", None),
        bad=(
            ("metrics", "metrics_path must be a path starting with '/' (got 'metrics')"),
            ("/", f"metrics_path {PATH}"),
            ("/a/../metrics", f"metrics_path {PATH}"),
            ("/metrics/", f"metrics_path {PATH}"),
            ("/met rics", f"metrics_path {PATH}"),
            ("/metrics\x00", f"metrics_path {PATH}"),
            ("/metrics?x=1", f"metrics_path {PATH}"),
            (7, "metrics_path must be a path starting with '/' (got 7)"),
        ),
        env_good=(("/m", "/m"), ("none", None)),
        env_bad=(("/", f"metrics_path {PATH}"),),
    ),
    "leak_threshold_seconds": Row(
        good=(0.01, 30, 86400.0),
        bad=(
            (0, "leak_threshold_seconds must be a number of seconds from 0.01 to 86400 (got 0)"),
            (
                INF,
                "leak_threshold_seconds must be a number of seconds from 0.01 to 86400 (got inf)",
            ),
            (
                NAN,
                "leak_threshold_seconds must be a number of seconds from 0.01 to 86400 (got nan)",
            ),
            (-1, "(got -1)"),
            ("30", "(got '30')"),
            (True, "(got True)"),
        ),
        env_good=(("12.5", 12.5), ("1e1", 10.0)),
        env_bad=(
            ("soon", "OBSERVER_LEAK_THRESHOLD_SECONDS must be a number of seconds in ASCII digits"),
            ("inf", "OBSERVER_LEAK_THRESHOLD_SECONDS must be a number of seconds in ASCII digits"),
            ("nan", "(got 'nan')"),
            ("\u0661\u0662", "(got '\u0661\u0662')"),
            ("1_000", "(got '1_000')"),
            ("1e9", "leak_threshold_seconds must be a number of seconds from 0.01 to 86400"),
        ),
    ),
    "sweep_interval_seconds": Row(
        good=(0.01, 1, 3600),
        bad=(
            (INF, f"sweep_interval_seconds {SECONDS_0_01_TO_3600} (got inf)"),
            (NAN, f"sweep_interval_seconds {SECONDS_0_01_TO_3600} (got nan)"),
            (1e-9, f"sweep_interval_seconds {SECONDS_0_01_TO_3600} (got 1e-09)"),
            (3601, f"sweep_interval_seconds {SECONDS_0_01_TO_3600} (got 3601)"),
            ("1", f"sweep_interval_seconds {SECONDS_0_01_TO_3600} (got '1')"),
        ),
        env_good=(("0.25", 0.25),),
        env_bad=(
            ("1e-9", f"sweep_interval_seconds {SECONDS_0_01_TO_3600} (got 1e-09)"),
            ("Infinity", "OBSERVER_SWEEP_INTERVAL_SECONDS must be a number of seconds in ASCII"),
        ),
    ),
    "capture_origin": Row(
        good=(True, False),
        bad=(("yes", "capture_origin must be True or False (got 'yes')"), (1, "(got 1)")),
        env_good=(("false", False), ("YES", True), ("0", False)),
        env_bad=(("maybe", "OBSERVER_CAPTURE_ORIGIN must be true or false (got 'maybe')"),),
    ),
    "application_name": Row(
        good=("billing", "x" * 63, "", None),
        bad=(
            ("a\x00b", f"{APP_NAME} (got 'a\\x00b')"),
            ("tab\there", f"{APP_NAME} (got 'tab\\there')"),
            ("café", f"{APP_NAME} (got 'café'): PostgreSQL rewrites other characters"),
            ("x" * 64, APP_NAME),
            (7, f"{APP_NAME} (got 7)"),
        ),
        env_good=(("shop", "shop"), ("none", None)),
        env_bad=(("a\x01b", APP_NAME),),
    ),
    "max_routes": Row(
        good=(1, 200, 10000),
        bad=(
            (0, "max_routes must be a whole number >= 1 and <= 10000 (got 0)"),
            (10001, "max_routes must be a whole number >= 1 and <= 10000 (got 10001)"),
            (5.0, "(got 5.0)"),
            (True, "(got True)"),
            ("50", "(got '50')"),
        ),
        env_good=(("50", 50), (" 7 ", 7)),
        env_bad=(
            ("1.5", "OBSERVER_MAX_ROUTES must be a whole number in ASCII digits (got '1.5')"),
            (
                "\u0661\u0662",
                "OBSERVER_MAX_ROUTES must be a whole number in ASCII digits (got '\u0661\u0662')",
            ),
            ("1_0", "OBSERVER_MAX_ROUTES must be a whole number in ASCII digits (got '1_0')"),
        ),
    ),
    "max_origins": Row(
        good=(1, 100, 10000),
        bad=(
            (
                0,
                "max_origins must be a whole number >= 1 and <= 10000 (got 0); it bounds the "
                "origin label (each code line adds a series per leak reason); further values are "
                "counted as 'other'",
            ),
            (10001, "max_origins must be a whole number >= 1 and <= 10000 (got 10001)"),
            (2.5, "(got 2.5)"),
            (False, "(got False)"),
            ("100", "(got '100')"),
        ),
        env_good=(("25", 25),),
        env_bad=(
            ("ten", "OBSERVER_MAX_ORIGINS must be a whole number in ASCII digits (got 'ten')"),
            ("-1", "max_origins must be a whole number >= 1 and <= 10000 (got -1)"),
        ),
    ),
    "live_page_path": Row(
        good=("/observer", "/_internal/observer", None),
        bad=(
            ("/", f"live_page_path {PATH}"),
            ("/metrics", "live_page_path and metrics_path must differ (both are '/metrics')"),
            ("/x/..", f"live_page_path {PATH}"),
            ("/./x", f"live_page_path {PATH}"),
            ("observer", "live_page_path must be a path starting with '/' (got 'observer')"),
            ("/obs#x", f"live_page_path {PATH}"),
            ("/obs%20x", f"live_page_path {PATH}"),
        ),
        env_good=(("/observer", "/observer"), ("off", None)),
        env_bad=(("/", f"live_page_path {PATH}"),),
    ),
    "request_end_grace_seconds": Row(
        good=(0, 1.0, 60),
        bad=(
            (-1, "request_end_grace_seconds must be a number of seconds from 0 to 60 (got -1)"),
            (NAN, "request_end_grace_seconds must be a number of seconds from 0 to 60 (got nan)"),
            (INF, "(got inf)"),
            ("1", "(got '1')"),
        ),
        env_good=(("0.5", 0.5),),
        env_bad=(("nan", "OBSERVER_REQUEST_END_GRACE_SECONDS must be a number of seconds"),),
    ),
    "server_timing": Row(
        good=(True, False),
        bad=(("no", "server_timing must be True or False (got 'no')"),),
        env_good=(("off", False),),
        env_bad=(("2", "OBSERVER_SERVER_TIMING must be true or false (got '2')"),),
    ),
    "log_requests": Row(
        good=(True, False),
        bad=((1, "log_requests must be True or False (got 1)"),),
        env_good=(("on", True),),
        env_bad=(("", "OBSERVER_LOG_REQUESTS must be true or false (got '')"),),
    ),
    "slow_checkout_seconds": Row(
        good=(0.001, 1.0, 3600, None),
        bad=(
            (0, "slow_checkout_seconds must be a number of seconds from 0.001 to 3600 (got 0)"),
            (INF, "slow_checkout_seconds must be a number of seconds from 0.001 to 3600 (got inf)"),
            (NAN, "(got nan)"),
            (True, "(got True)"),
        ),
        env_good=(("2.5", 2.5), ("none", None)),
        env_bad=(("inf", "OBSERVER_SLOW_CHECKOUT_SECONDS must be a number of seconds"),),
    ),
    "idle_gap_log_seconds": Row(
        good=(0.001, 1.0, 3600, None),
        bad=(
            (0, "idle_gap_log_seconds must be a number of seconds from 0.001 to 3600 (got 0)"),
            (-1, "(got -1)"),
            (INF, "(got inf)"),
            (NAN, "(got nan)"),
            ("1", "(got '1')"),
            (True, "(got True)"),
        ),
        env_good=(("0.25", 0.25), ("off", None)),
        env_bad=(
            ("soon", "OBSERVER_IDLE_GAP_LOG_SECONDS must be a number of seconds"),
            ("7200", "idle_gap_log_seconds must be a number of seconds from 0.001 to 3600"),
            # "false" to turn it off: the error says how (it named no way to)
            (
                "false",
                "OBSERVER_IDLE_GAP_LOG_SECONDS must be a number of seconds in ASCII digits, "
                "or off (got 'false')",
            ),
        ),
    ),
    "tracing": Row(
        good=(True, False),
        bad=((None, "tracing must be True or False (got None)"),),
        env_good=(("true", True),),
        env_bad=(("enabled", "OBSERVER_TRACING must be true or false (got 'enabled')"),),
    ),
    "metrics_token": Row(
        good=("s3cret-token-0123456789", None),
        bad=(
            ("two words and more", "metrics_token holds whitespace, control or non-ASCII"),
            ("tok\x00en-0123456789abc", "metrics_token holds whitespace, control or non-ASCII"),
            ("short-token", "metrics_token has 11 characters, fewer than 16"),
            (1234, "metrics_token must be a string (got a int)"),
        ),
        env_good=(("abcdefghijklmnop", "abcdefghijklmnop"),),
        env_bad=(("two words and more", "OBSERVER_METRICS_TOKEN holds whitespace, control or"),),
    ),
    "metrics_port": Row(
        good=(0, 9464, 65535, None),
        bad=(
            (-1, "metrics_port must be a port number from 0 to 65535 (got -1)"),
            (65536, "metrics_port must be a port number from 0 to 65535 (got 65536)"),
            (9464.0, "(got 9464.0)"),
            ("9464", "(got '9464')"),
            (True, "(got True)"),
        ),
        env_good=(("9464", 9464),),
        env_bad=(
            ("99999", "metrics_port must be a port number from 0 to 65535 (got 99999)"),
            (
                "\u0669\u0664\u0666\u0664",
                "OBSERVER_METRICS_PORT must be a whole number in ASCII digits, or off (got "
                "'\u0669\u0664\u0666\u0664')",
            ),
        ),
    ),
    "metrics_port_shared": Row(
        good=(True, False),
        bad=(("yes", "metrics_port_shared must be True or False (got 'yes')"),),
        env_good=(("1", True),),
        env_bad=(("shared", "OBSERVER_METRICS_PORT_SHARED must be true or false (got 'shared')"),),
    ),
    "metrics_host": Row(
        good=("127.0.0.1", "0.0.0.0", "::", "localhost", "metrics.internal", "db_1"),
        bad=(
            ("", "metrics_host must be an address to listen on, such as 127.0.0.1"),
            ("bad host", "such as 127.0.0.1, 0.0.0.0 or :: (got 'bad host')"),
            ("host\x00", "(got 'host\\x00')"),
            ("-x", "(got '-x')"),
            (None, "(got None)"),
        ),
        env_good=(("0.0.0.0", "0.0.0.0"),),
        env_bad=(("a b", "metrics_host must be an address to listen on"),),
    ),
}


def test_the_settings_table_covers_every_option() -> None:
    """A new option without a row here fails: each is validated and tested."""
    assert sorted(SETTINGS) == sorted(f.name for f in dataclasses.fields(Settings))
    assert all(row.good and row.bad and row.env_good and row.env_bad for row in SETTINGS.values())


def _cases(kind: str) -> list[tuple[str, object, object]]:
    return [
        (name, *case) if isinstance(case, tuple) else (name, case, None)
        for name, row in SETTINGS.items()
        for case in getattr(row, kind)
    ]


@pytest.mark.parametrize(("name", "value", "_"), _cases("good"))
def test_good_keyword_values_are_kept(name: str, value: object, _: None) -> None:
    """Each good value is accepted and kept as given."""
    assert getattr(Settings.from_options({name: value}, environ={}), name) == value


@pytest.mark.parametrize(("name", "value", "message"), _cases("bad"))
def test_bad_keyword_values_fail_naming_the_option(name: str, value: object, message: str) -> None:
    """Each bad value fails at once with a ConfigurationError naming the option and the value."""
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_options({name: value}, environ={})
    text = str(raised.value)
    assert message in text
    assert name in text
    assert "\n" not in text


@pytest.mark.parametrize(("name", "text", "value"), _cases("env_good"))
def test_good_environment_values_are_read(name: str, text: str, value: object) -> None:
    """OBSERVER_<NAME> with a good text sets the option to the value it spells."""
    got = getattr(Settings.from_options({}, environ={f"OBSERVER_{name.upper()}": text}), name)
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize(("name", "text", "message"), _cases("env_bad"))
def test_bad_environment_values_fail_naming_the_option(name: str, text: str, message: str) -> None:
    """A bad OBSERVER_* text fails at startup naming the variable (when it cannot be read) or
    the option (when it reads as a bad value)."""
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_options({}, environ={f"OBSERVER_{name.upper()}": text})
    assert message in str(raised.value)
    assert name in str(raised.value).lower()


# -- the command line ------------------------------------------------------------------------


class Flag(NamedTuple):
    """Bad values of one flag of one command, each with a fragment of its one-line error."""

    command: str
    flag: str  # the option string; a positional argument by its metavar
    bad: tuple[tuple[str, str], ...]


URL = "postgresql://app@127.0.0.1:1/app"
NOT_A_PORT = "has a port that is not a number; expected postgresql://user:password@host:port"
FLAGS = [
    Flag("doctor", "DATABASE_URL", (
        ("postgresql://app:pw@127.0.0.1:abc/app", f"DATABASE_URL {NOT_A_PORT}"),
        ("postgresql://app:pw@127.0.0.1:99999/app", "DATABASE_URL has port 99999, not 1-65535"),
        ("postgresql://app:pw@h st/app", "DATABASE_URL has a host that is not a host name"),
        ("mysql://app:pw@db/app", "doctor checks PostgreSQL only (got a 'mysql' URL)"),
    )),
    Flag("doctor", "--pool-size", (
        ("x", "--pool-size must be a whole number from 0 to 10000 (got 'x')"),
        ("1.5", "(got '1.5')"), ("-1", "(got '-1')"), ("\u0665", "(got '\u0665')"),
    )),
    Flag("doctor", "--max-overflow", (
        ("-2", "--max-overflow must be a whole number from -1 to 10000 (got '-2'); -1 for unbou"),
    )),
    Flag("doctor", "--pool-recycle", (
        ("nan", "--pool-recycle must be a number of seconds from -1 to 86400 (got 'nan')"),
        ("inf", "(got 'inf')"),
    )),
    Flag("doctor", "--pool-timeout", (
        ("0", "--pool-timeout must be a number of seconds from 0.001 to 3600 (got '0')"),
        ("nan", "(got 'nan')"),
    )),
    Flag("doctor", "--pool-pre-ping", (("yes", "ignored explicit argument 'yes'"),)),
    Flag("doctor", "--no-pool-pre-ping", (("yes", "ignored explicit argument 'yes'"),)),
    Flag("doctor", "--workers", (("0", "--workers must be a whole number from 1 to 1024"),)),
    Flag("doctor", "--replicas", (("two", "--replicas must be a whole number from 1 to 10000"),)),
    Flag("doctor", "--request-timeout", (
        ("inf", "--request-timeout must be a number of seconds from 0.001 to 86400 (got 'inf')"),
        ("-1", "(got '-1')"),
    )),
    Flag("doctor", "--network-idle-timeout", (
        ("x", "--network-idle-timeout must be a number of seconds from 0.001 to 86400 (got 'x')"),
    )),
    Flag("doctor", "--application-name", (
        ("a\x00b", "--application-name must be printable ASCII of at most 63 bytes"),
    )),
    Flag("doctor", "--alembic-config", (("/nonexistent/a.ini", "no file at '/nonexistent/a.i"),)),
    Flag("doctor", "--alembic-script-location", (("/nonexistent/migrations", "no directory at"),)),
    Flag("doctor", "--alembic-version-table", (
        ("alembic version", "--alembic-version-table must be a table name of letters, digits"),
    )),
    Flag("doctor", "--connect-timeout", (
        ("nan", "--connect-timeout must be a number of seconds from 0.001 to 3600 (got 'nan')"),
        ("0", "(got '0')"),
    )),
    Flag("doctor", "--fail-on", (("warn", "invalid choice: 'warn' (choose from 'error', 'warni"),)),
    Flag("doctor", "--json", (("yes", "ignored explicit argument 'yes'"),)),
    Flag("doctor", "--prometheus", (
        ("ftp://prom:9090", "--prometheus must be an http(s) URL; give the base URL of the Prom"),
        ("http://prom:9090?x", "--prometheus takes no query or fragment"),
    )),
    Flag("doctor", "--job", (("", "--job must be the Prometheus job label of the app's scrape"),)),
    Flag("doctor", "--range", (
        ("7", "--range must be a Prometheus duration from 15m to 366d, such as 7d or 12h (got '7"),
        ("1m", "(got '1m'); it is how much history doctor reads"),
        ("400d", "(got '400d')"),
    )),
    Flag("sidecar", "--address", (
        ("bad host", "--address must be an IP address or a host name, such as 127.0.0.1"),
    )),
    Flag("sidecar", "--port", (
        ("99999", "--port must be a whole number from 0 to 65535 (got '99999'); 0 picks a free"),
        ("http", "(got 'http')"),
    )),
    Flag("sidecar", "--database-url", (
        ("postgresql://app:pw@db:abc/app", f"OBSERVER_SIDECAR_DATABASE_URL {NOT_A_PORT}"),
        ("sqlite:///x.db", "must be a PostgreSQL URL (got a 'sqlite' one)"),
    )),
    Flag("sidecar", "--application-name", (
        ("x" * 64, "--application-name must be printable ASCII of at most 63 bytes"),
    )),
    Flag("sidecar", "--poll-interval", (
        ("inf", "--poll-interval must be a number of seconds from 0.1 to 3600 (got 'inf')"),
        ("nan", "(got 'nan')"),
        ("0", "(got '0')"),
    )),
    Flag("sidecar", "--statement-timeout-ms", (
        ("1.5", "--statement-timeout-ms must be a whole number of milliseconds from 1 to 3600000"),
        ("20000", "must be a whole number of milliseconds from 1 to 15000 (got '20000'); at most"),
    )),
    Flag("sidecar", "--connect-timeout", (
        ("nan", "--connect-timeout must be a number of seconds from 0.1 to 300 (got 'nan')"),
    )),
    Flag("sidecar", "--multiproc-dir", (
        ("/nonexistent/mp", "the multiprocess directory '/nonexistent/mp' does not exist"),
    )),
    Flag("sidecar", "--metrics-token-file", (
        ("/nonexistent/t", "OBSERVER_SIDECAR_METRICS_TOKEN_FILE: cannot read '/nonexistent/t'"),
    )),
    Flag("sidecar", "--database-url-file", (
        ("/nonexistent/u", "OBSERVER_SIDECAR_DATABASE_URL_FILE: cannot read '/nonexistent/u'"),
    )),
    Flag("sidecar", "--prune-dead-workers", (("yes", "ignored explicit argument 'yes'"),)),
    Flag("sidecar", "--no-prune-dead-workers", (("yes", "ignored explicit argument 'yes'"),)),
    Flag("sidecar", "--databases", (
        ("a,,b", "--databases / OBSERVER_SIDECAR_DATABASES must be database names separated by"),
        ("*,a", "or '*' for every database (got '*,a')"),
    )),
    Flag("sidecar", "--check-health", (("yes", "ignored explicit argument 'yes'"),)),
    Flag("render", "--out", (
        ("/dev/null/sub", "cannot write to --out '/dev/null/sub' (Not a directory"),
    )),
    Flag("render", "--job-selector", (
        ('"', "--job-selector must be PromQL label matchers separated by commas"),
        ('job=~"api\\d"', "each value quoted, backslashes doubled (got 'job=~\"api\\\\d\"')"),
        ('{job="api"}', "--job-selector takes label matchers without braces"),
        ('job="api",', "--job-selector must be PromQL label matchers"),
    )),
    Flag("render", "--server-selector", (
        ("job=sidecar", "--server-selector must be PromQL label matchers separated by commas"),
    )),
    Flag("render", "--runbook-url", (
        ("docs/runbooks.md", "--runbook-url must be an http(s) URL without spaces"),
    )),
    Flag("render", "--dashboard-url", (
        ("https://grafana example.com", "--dashboard-url must be an http(s) URL without spaces"),
    )),
    Flag("render", "--source-url", (
        ("https://github.com/org/repo/blob/main/{file}", "--source-url must contain {path}, "
         "where the leaking line's file goes"),
        ("github.com/{path}", "--source-url must be an http(s) URL without spaces"),
        ("https://x.example/{path}?b=$B", "--source-url may hold only the placeholders {path} "
         "and {line}, and no quote, backslash or '$'"),
    )),
    Flag("render", "--scrape-interval", (
        ("15", "--scrape-interval: '15' is not a Prometheus duration"),
        ("0s", "--scrape-interval must be longer than 0s (got '0s')"),
        ("\u0661\u0665s", "is not a Prometheus duration"),
    )),
    Flag("render", "--set", (
        ("saturation_ratio=nan", "saturation_ratio must be a number (got 'nan')"),
        ("long_hold_seconds=1e999", "long_hold_seconds must be a finite number > 0 (got inf)"),
        ("rate_window=0s", "rate_window must be longer than 0s (got '0s')"),
        ("nope=1", "expected NAME=VALUE with NAME one of: job_selector"),
    )),
    Flag("render", "--check", (("yes", "ignored explicit argument 'yes'"),)),
    Flag("demo", "--database-url", (
        ("postgresql+asyncpg://app:pw@db:abc/app", f"--database-url {NOT_A_PORT}"),
        ("postgresql://db/app", "--database-url needs an async driver, e.g. postgresql+asyncpg"),
        ("::nonsense", "--database-url is not a URL"),
    )),
    Flag("demo", "--requests", (("0", "--requests must be a whole number from 1 to 1000000"),)),
    Flag("demo", "--concurrency", (("-3", "--concurrency must be a whole number from 1 to 1000"),)),
    Flag("demo", "--short", (("yes", "ignored explicit argument 'yes'"),)),
    Flag("demo", "--serve", (("yes", "ignored explicit argument 'yes'"),)),
    Flag("demo", "--host", (("local host", "--host must be an IP address or a host name"),)),
    Flag("demo", "--port", (("99999", "--port must be a whole number from 0 to 65535 (got '9"),)),
    Flag("demo", "--no-progress", (("yes", "ignored explicit argument 'yes'"),)),
    Flag("demo", "--workers", (("0", "--workers must be a whole number from 1 to 64 (got '0')"),)),
    Flag("demo", "--rounds", (("-1", "--rounds must be a whole number from 0 to 1000000"),)),
]  # fmt: skip


def subparsers() -> dict[str, argparse.ArgumentParser]:
    """Each command's parser, as ``observer`` builds them."""
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def flags_of(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string (but -h/--help) and positional metavar of ``parser``."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        found += action.option_strings or [action.metavar or action.dest]
    return found


def test_the_flag_table_covers_every_flag_of_every_command() -> None:
    """A new flag without a row here fails: each refuses bad values in one line."""
    table = sorted((flag.command, flag.flag) for flag in FLAGS)
    assert table == sorted((name, f) for name, p in subparsers().items() for f in flags_of(p))


def _flag_cases() -> list[tuple[str, str, str, str]]:
    return [(f.command, f.flag, value, message) for f in FLAGS for value, message in f.bad]


def argv_for(command: str, flag: str, value: str, tmp_path: Path) -> list[str]:
    """A command line that is fine but for ``flag`` set to ``value`` (``--flag=value``: the
    last one given wins over the base line's, and a value may start with '-')."""
    if flag == "DATABASE_URL":
        return ["doctor", value]
    base = {
        "doctor": ["doctor", URL],
        "sidecar": ["sidecar", "--multiproc-dir", str(tmp_path)],
        "render": ["render", "--out", str(tmp_path)],
        "demo": ["demo", "--short", "--no-progress"],
    }[command]
    return [*base, f"{flag}={value}"]


@pytest.mark.parametrize(("command", "flag", "value", "message"), _flag_cases())
def test_a_bad_flag_value_is_one_line_and_exit_code_2(
    command: str,
    flag: str,
    value: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``observer <command> <flag>=<bad>`` exits 2 with one line on stderr that names the
    command and the message's fragment, nothing on stdout, no traceback, no password."""
    for variable in (
        "OBSERVER_DEMO_DATABASE_URL",
        "OBSERVER_DATABASE_URL",
        "PROMETHEUS_MULTIPROC_DIR",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("OBSERVER_SIDECAR_DATABASE_URL", raising=False)
    code = main(argv_for(command, flag, value, tmp_path))
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.count("\n") == 1, err
    assert err.endswith("\n")
    assert err.startswith(f"observer {command}: "), err
    assert message in err, err
    assert "Traceback" not in err
    assert ":pw@" not in err


def test_bad_sidecar_environment_values_are_one_line_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The sidecar's OBSERVER_SIDECAR_* variables are checked as its flags are, naming both."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for variable, value, message in [
        ("OBSERVER_SIDECAR_POLL_INTERVAL", "inf", "--poll-interval / OBSERVER_SIDECAR_POLL_INTERVAL must be a number of seconds from 0.1 to 3600 (got 'inf')"),  # noqa: E501
        ("OBSERVER_SIDECAR_PORT", "\u0669\u0661\u0668\u0668", "--port / OBSERVER_SIDECAR_PORT must be a whole number from 0 to 65535 (got '\u0669\u0661\u0668\u0668')"),  # noqa: E501
        ("OBSERVER_SIDECAR_ADDRESS", "0.0.0.0 ", "--address / OBSERVER_SIDECAR_ADDRESS must be an IP address or a host name"),  # noqa: E501
        ("OBSERVER_SIDECAR_CONNECT_TIMEOUT", "nan", "--connect-timeout / OBSERVER_SIDECAR_CONNECT_TIMEOUT must be a number of seconds from 0.1 to 300 (got 'nan')"),  # noqa: E501
        ("OBSERVER_APPLICATION_NAME", "a\x07b", "--application-name / OBSERVER_APPLICATION_NAME must be printable ASCII"),  # noqa: E501
        ("OBSERVER_SIDECAR_DATABASES", ",", "--databases / OBSERVER_SIDECAR_DATABASES must be database names separated by commas, or '*' for every database (got ',')"),  # noqa: E501
    ]:  # fmt: skip
        with monkeypatch.context() as env:
            env.setenv(variable, value)
            assert main(["sidecar"]) == 2
        out, err = capsys.readouterr()
        assert (out, err.count("\n")) == ("", 1)
        assert err.startswith(f"observer sidecar: {message}"), err


def test_the_demo_says_in_one_line_that_it_cannot_connect(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database that refuses the connection (nothing listening; on a server with password
    authentication a wrong password fails the same way) is one line naming the URL without its
    password, before any server starts."""
    from tests.helpers.processes import free_port

    port = free_port()
    code = main(["demo", "--database-url", f"postgresql+asyncpg://app:Secr3t@127.0.0.1:{port}/x"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.startswith(
        f"observer demo: cannot connect to --database-url postgresql+asyncpg://app:***@127.0.0.1:"
        f"{port}/x (ConnectionRefusedError: "
    ), err
    assert err.endswith("; check its host, port, user and password\n")
    assert "Secr3t" not in err
    assert err.count("\n") == 1


UNITS = ("seconds", "milliseconds", "connections", "processes", "copies", "requests", "clients",
         "rounds", "port")  # fmt: skip


def _numeric(action: argparse.Action) -> bool:
    """Whether the option takes a number: its ``type`` reads '1' as one."""
    if action.type is None or not callable(action.type):
        return False
    try:
        return isinstance(action.type("1"), int | float)
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False


def test_every_option_of_every_command_is_explained() -> None:
    """Each option of each command has a help text; a numeric one names its unit and its
    default (or says what happens without it)."""
    missing, no_unit, no_default = [], [], []
    for name, parser in subparsers().items():
        for action in parser._actions:
            where = f"observer {name} {'/'.join(action.option_strings) or action.dest}"
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.help:
                missing.append(where)
            elif _numeric(action):
                if not any(re.search(rf"\b{unit}\b", action.help) for unit in UNITS):
                    no_unit.append(where)
                if "default" not in action.help:
                    no_default.append(where)
    assert (missing, no_unit, no_default) == ([], [], [])


def test_doctor_help_shows_defaults_and_units(capsys: pytest.CaptureFixture[str]) -> None:
    """``observer doctor --help`` (issue #16) explains the options that had no text."""
    assert main(["doctor", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in [
        "--pool-size N connections the app's pool keeps, per process (default: 5, SQLAlchemy's, assumed)",  # noqa: E501
        "--workers N processes running the pool in each replica, e.g. uvicorn or gunicorn workers (default: 1)",  # noqa: E501
        "--replicas N copies of the app (containers, hosts) on the same database (default: 1)",
        "--pool-timeout SECONDS seconds a checkout waits for a free connection before it fails (default: 30, SQLAlchemy's, assumed)",  # noqa: E501
        "--connect-timeout SECONDS seconds to wait for the database's answer; the whole check waits at most twice that; with --prometheus, the most each of its answers may take (default: 10)",  # noqa: E501
        "--fail-on {error,warning,info,drift} the lowest severity of a finding that makes the exit code 1, or 'drift' to fail on a schema drift only (default: warning)",  # noqa: E501
        "--request-timeout SECONDS seconds a client or proxy waits for a response (default: 30, assumed)",  # noqa: E501
    ]:  # fmt: skip
        assert expected in text
