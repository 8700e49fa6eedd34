"""The sessions dashboard's "Leaking code lines" table, evaluated by promtool: each line with
its leaks in the range, its route when one route of its instance leaked with its reason (else
a cell saying several did), and its source link when ``source_url`` is set."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from observer.monitoring._origin_table import SEVERAL_ROUTES, leaking_lines_query
from observer.monitoring.config import MonitoringConfig
from tests.monitoring.promql import substitute

pytestmark = pytest.mark.promtool

SOURCE = "https://git.example.com/shop/-/blob/main/{path}#L{line}"
ORIGINS = "sqlalchemy_orm_session_leak_origins_total"
LEAKS = "sqlalchemy_orm_session_leaks_total"


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    body = ", ".join(f'{k}="{v}"' for k, v in {"job": "api", **labels}.items())
    return {"series": f"{name}{{{body}}}", "values": values}


# One hour of leaks, one sample a minute, on two instances of job "api":
# - api-1: /orders/{id} alone leaks with request_end, from two lines (3 and 1 leaks), /jobs
#   with garbage_collected beyond max_origins (other), and unknown has no leak in the hour;
# - api-2: /a and /b both leak with request_end: neither line can be given one of them.
INPUT = [
    _series(LEAKS, "_x20 1+1x3 4x40", instance="api-1", reason="request_end", route="/orders/{id}"),
    _series(ORIGINS, "_x20 1+1x2 3x40", instance="api-1", reason="request_end",
            origin="app/orders.py:42 in get_order"),
    _series(ORIGINS, "_x22 1x40", instance="api-1", reason="request_end",
            origin="app/orders.py:57 in list_orders"),
    _series(LEAKS, "_x30 1 2x31", instance="api-1", reason="garbage_collected", route="/jobs"),
    _series(ORIGINS, "_x30 1 2x31", instance="api-1", reason="garbage_collected", origin="other"),
    _series(ORIGINS, "0x62", instance="api-1", reason="too_old", origin="unknown"),
    _series(LEAKS, "_x40 1 2x20", instance="api-2", reason="request_end", route="/a"),
    _series(LEAKS, "_x40 1x20", instance="api-2", reason="request_end", route="/b"),
    _series(ORIGINS, "_x40 1 3x20", instance="api-2", reason="request_end",
            origin="app/ab.py:9 in ab"),
]  # fmt: skip


def _row(instance: str, origin: str, reason: str, route: str, leaks: int, url: str = "") -> Any:
    labels = {"instance": instance, "origin": origin, "reason": reason, "route": route}
    return {"labels": _labels(labels | ({"url": url} if url else {})), "value": leaks}


def _labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


def _evaluate(promtool: str, tmp_path: Path, config: MonitoringConfig, rows: list[Any]) -> None:
    """promtool evaluates the table's query at 60m over the last hour ($__range), every
    dashboard variable at All, and expects exactly ``rows``."""
    expr = substitute(leaking_lines_query(config), {"__range": "1h"})
    case = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": INPUT,
                "promql_expr_test": [{"expr": expr, "eval_time": "60m", "exp_samples": rows}],
            }
        ],
    }
    path = tmp_path / "table.yaml"
    path.write_text(yaml.safe_dump(case, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_line_gets_its_route_when_one_route_leaked_with_its_reason(
    promtool: str, tmp_path: Path
) -> None:
    """Without source_url: a row per line and reason with its leaks in the range (a line born
    in the range counts whole), the route when it is the only one of its instance with that
    reason, SEVERAL_ROUTES otherwise; no url label; ``other`` counts, an older series with no
    leak in the range (``unknown``) has no row."""
    _evaluate(promtool, tmp_path, MonitoringConfig(), [
        _row("api-1", "app/orders.py:42 in get_order", "request_end", "/orders/{id}", 3),
        _row("api-1", "app/orders.py:57 in list_orders", "request_end", "/orders/{id}", 1),
        _row("api-1", "other", "garbage_collected", "/jobs", 2),
        _row("api-2", "app/ab.py:9 in ab", "request_end", SEVERAL_ROUTES, 3),
    ])  # fmt: skip


def test_with_source_url_each_line_links_to_its_file_and_line(
    promtool: str, tmp_path: Path
) -> None:
    """With source_url, each line's row carries the URL with its path and line filled in;
    ``other`` (no file) gets none."""
    blob = "https://git.example.com/shop/-/blob/main/"
    _evaluate(promtool, tmp_path, MonitoringConfig(source_url=SOURCE), [
        _row("api-1", "app/orders.py:42 in get_order", "request_end", "/orders/{id}", 3,
             f"{blob}app/orders.py#L42"),
        _row("api-1", "app/orders.py:57 in list_orders", "request_end", "/orders/{id}", 1,
             f"{blob}app/orders.py#L57"),
        _row("api-1", "other", "garbage_collected", "/jobs", 2),
        _row("api-2", "app/ab.py:9 in ab", "request_end", SEVERAL_ROUTES, 3, f"{blob}app/ab.py#L9"),
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://git.example.com/{file}#L{line}", "source_url must contain {path}, where"),
        ("git.example.com/{path}", "source_url must be an http(s) URL without spaces"),
        ('https://x.example/{path}"', "source_url may hold only the placeholders {path} and"),
        ("https://x.example/{path}?ref=${BRANCH}", "source_url may hold only the placeholders"),
        ("https://x.example/{path}#L{lineno}", "source_url may hold only the placeholders"),
    ],
)
def test_a_source_url_without_path_or_with_other_placeholders_is_refused(
    url: str, message: str
) -> None:
    """A template the table cannot fill is an error naming the option, with an example."""
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        MonitoringConfig(source_url=url)
