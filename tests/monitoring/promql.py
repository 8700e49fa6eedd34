"""Every PromQL expression the project ships (Grafana variables substituted) and its metrics."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from observer.monitoring._panels import queries
from tests.monitoring.shipped import ALERTS, DASHBOARDS, RULES

# Grafana's macros as dashboard-linter substitutes them; every other variable matches anything.
MACROS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h", "__auto": "1m"}
_VARIABLE = re.compile(r"\$\{([^}]+)\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^label_values\((.*),\s*(\w+)\)$")
KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "offset",
    "bool",
    "inf",
    "nan",
}


def substitute(expr: str, macros: dict[str, str] = MACROS) -> str:
    """``expr`` with Grafana variables replaced so that Prometheus can parse and run it."""

    def value(match: re.Match[str]) -> str:
        name = (match.group(1) or match.group(2) or match.group(3)).split(":")[0]
        if name.isdigit():  # label_replace's ${1}: no variable, Grafana leaves it alone
            return match.group(0)
        return macros.get(name, ".+")

    return _VARIABLE.sub(value, expr)


def dashboard_expressions(
    rate_interval: str = "1m", values: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard target and variable query, variables substituted:
    those in ``values`` by their value, the others by ``.+`` (All)."""
    macros = {**MACROS, "__rate_interval": rate_interval, **(values or {})}
    found = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for title, expr in queries(board):
            found.append((f"{path.name}: {title}", substitute(expr, macros)))
        for name, _label, selector in variable_queries(board, macros):
            found.append((f"{path.name}: ${name}", selector))
    return found


def variable_queries(
    board: dict[str, Any], macros: dict[str, str] = MACROS
) -> list[tuple[str, str, str]]:
    """(name, label, series selector) of every ``label_values(selector, label)`` variable of a
    dashboard, Grafana variables substituted."""
    found = []
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = _LABEL_VALUES.match(variable["query"]["query"])
            assert match, variable["query"]
            found.append((variable["name"], match.group(2), substitute(match.group(1), macros)))
    return found


def rule_expressions() -> list[tuple[str, str]]:
    """(rule name, PromQL) of every alerting and recording rule."""
    found = []
    for path in (RULES, ALERTS):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                found.append((rule.get("alert") or rule["record"], rule["expr"]))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (label names, functions and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if match.group(2) is None and match.group(1) not in KEYWORDS:
            names.add(match.group(1))
    return names
