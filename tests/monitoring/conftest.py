"""Fixtures of the monitoring tests: the shipped rule files and dashboards, read from the repo."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.monitoring.shipped import ALERTS, DASHBOARDS, RULES


@pytest.fixture(scope="session")
def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the shipped alerts file."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="session")
def recording_rules() -> list[dict[str, Any]]:
    """Every recording rule of the shipped rules file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@pytest.fixture(scope="session")
def dashboards() -> dict[str, dict[str, Any]]:
    """The shipped dashboards, by file name."""
    return {path.name: json.loads(path.read_text()) for path in DASHBOARDS}
