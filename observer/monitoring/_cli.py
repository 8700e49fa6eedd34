"""``observer render``: its options, the configuration they ask for, and the run."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from observer.monitoring._render import stale, write
from observer.monitoring.config import MonitoringConfig

_FIELDS = {field.name: field for field in dataclasses.fields(MonitoringConfig)}


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or name not in _FIELDS:
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE with NAME one of: {', '.join(_FIELDS)} (got {text!r})"
        )
    return name, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``observer render``."""
    parser.add_argument(
        "--out", type=Path, default=Path("."), help="directory receiving alerts/ and dashboards/"
    )
    parser.add_argument(
        "--job-selector", help='label matchers of the app\'s scrape jobs, e.g. job="api"'
    )
    parser.add_argument("--server-selector", help="label matchers of the sidecar's metrics")
    parser.add_argument("--runbook-url", help="runbook page; alerts link to <url>#<alertname>")
    parser.add_argument("--dashboard-url", help="Grafana base URL for dashboard_url annotations")
    parser.add_argument("--scrape-interval", help="scrape interval of the app's jobs (15s)")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        type=_setting,
        default=[],
        metavar="NAME=VALUE",
        help="any threshold or duration, e.g. --set saturation_ratio=0.9 --set exhausted_for=2m",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the files under --out differ from a fresh render",
    )


def config_from(args: argparse.Namespace) -> MonitoringConfig:
    """The configuration the command line asks for."""
    changes: dict[str, Any] = {}
    for option in ("job_selector", "server_selector", "runbook_url", "dashboard_url"):
        if getattr(args, option) is not None:
            changes[option] = getattr(args, option)
    if args.scrape_interval is not None:
        changes["scrape_interval"] = args.scrape_interval
    for name, value in args.settings:
        if _FIELDS[name].type != "float":
            changes[name] = value
            continue
        try:
            changes[name] = float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number (got {value!r})") from None
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
    for path in write(args.out, config):
        print(path)
    return 0
