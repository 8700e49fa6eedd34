"""``observer render``: its options, the configuration they ask for, and the run."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from observer import _values as values
from observer.monitoring._render import stale, write
from observer.monitoring.config import (
    MonitoringConfig,
    check_selector,
    check_source_url,
    check_url,
    duration_seconds,
)

_FIELDS = {field.name: field for field in dataclasses.fields(MonitoringConfig)}


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or name not in _FIELDS:
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE with NAME one of: {', '.join(_FIELDS)} (got {text!r})"
        )
    return name, value


def _checked(check: Callable[[str, str], None], flag: str) -> Callable[[str], str]:
    """An argparse ``type=`` running one of the configuration's checks, naming the flag."""

    def convert(text: str) -> str:
        try:
            check(flag, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text

    return convert


def _duration(flag: str, text: str) -> None:
    try:
        seconds = duration_seconds(text)
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None
    if not seconds > 0:
        raise ValueError(f"{flag} must be longer than 0s (got {text!r})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``observer render``."""
    d = MonitoringConfig()
    parser.add_argument(
        "--out", type=Path, default=Path("."), metavar="DIR",
        help="directory receiving alerts/ and dashboards/, created if missing (default: the "
        "current directory)",
    )  # fmt: skip
    parser.add_argument(
        "--job-selector", type=_checked(check_selector, "--job-selector"), metavar="MATCHERS",
        help=f"PromQL label matchers of the app's scrape jobs, e.g. job=\"api\" (default: "
        f"{d.job_selector}, every job)",
    )  # fmt: skip
    parser.add_argument(
        "--server-selector", type=_checked(check_selector, "--server-selector"),
        metavar="MATCHERS",
        help="PromQL label matchers of the sidecar's metrics (default: the job selector)",
    )  # fmt: skip
    parser.add_argument(
        "--runbook-url", type=_checked(check_url, "--runbook-url"), metavar="URL",
        help="runbook page; alerts link to <url>#<alertname> (default: the project's "
        "docs/runbooks.md)",
    )  # fmt: skip
    parser.add_argument(
        "--dashboard-url", type=_checked(check_url, "--dashboard-url"), metavar="URL",
        help="Grafana base URL for dashboard_url annotations (default: none)",
    )  # fmt: skip
    parser.add_argument(
        "--source-url", type=_checked(check_source_url, "--source-url"), metavar="TEMPLATE",
        help="link each line of the sessions dashboard's leaking code lines table to its "
        "source: a URL with {path} and {line}, e.g. "
        "https://github.com/org/repo/blob/main/{path}#L{line} (default: no links)",
    )  # fmt: skip
    parser.add_argument(
        "--scrape-interval", type=_checked(_duration, "--scrape-interval"), metavar="DURATION",
        help="scrape interval of the app's jobs, a Prometheus duration such as 15s or 1m "
        f"(default: {d.scrape_interval})",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="settings", action="append", type=_setting, default=[],
        metavar="NAME=VALUE",
        help="any threshold (a number) or duration (30s, 5m, 1h), e.g. --set "
        "saturation_ratio=0.9 --set exhausted_for=2m; the names are MonitoringConfig's fields",
    )  # fmt: skip
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the files under --out differ from a fresh render",
    )


def config_from(args: argparse.Namespace) -> MonitoringConfig:
    """The configuration the command line asks for."""
    changes: dict[str, Any] = {}
    for option in ("job_selector", "server_selector", "runbook_url", "dashboard_url", "source_url"):
        if getattr(args, option) is not None:
            changes[option] = getattr(args, option)
    if args.scrape_interval is not None:
        changes["scrape_interval"] = args.scrape_interval
    for name, value in args.settings:
        if _FIELDS[name].type != "float":
            changes[name] = value
            continue
        # ASCII digits only (float() reads other digits, 'nan'); MonitoringConfig checks the range
        if values.DECIMAL.fullmatch(value.strip()) is None:
            raise ValueError(f"{name} must be a number (got {value!r})")
        changes[name] = float(value)
    return MonitoringConfig(**changes)


def run(args: argparse.Namespace) -> int:
    """Render (or with --check, compare); the exit code."""
    try:
        config = config_from(args)
    except ValueError as error:
        print(f"observer render: {error}", file=sys.stderr)
        return 2
    if args.check:
        differing = stale(args.out, config)
        for relative in differing:
            print(f"stale: {relative} (run: observer render --out {args.out})", file=sys.stderr)
        return 1 if differing else 0
    try:
        written = write(args.out, config)
    except OSError as error:
        print(
            f"observer render: cannot write to --out {str(args.out)!r} ({error.strerror}: "
            f"{error.filename}); give a directory you can write to",
            file=sys.stderr,
        )
        return 2
    for path in written:
        print(path)
    return 0
