"""Where the shipped monitoring files live in the repository."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "alerts" / "pool-observer-alerts.yaml"
RULES = ROOT / "alerts" / "pool-observer-rules.yaml"
UNIT_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yaml"))
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
