"""Typed builders for the Grafana dashboard JSON: variables, panels, targets and their layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Pinned on purpose: Grafana 10.4+ loads it as is and migrates it forward; tests pin it too.
SCHEMA_VERSION = 39
DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

# Matchers every target carries, so the dashboard variables filter every panel.
JOB = 'job=~"$job", instance=~"$instance"'
POOL = JOB + ', pool=~"$pool"'
# The PostgreSQL server view has its own variables: the sidecar may be the app's scrape target
# (one job for both) or a scrape job of its own.
SERVER = 'job=~"$server_job", instance=~"$server_instance"'

Json = dict[str, Any]


def m(metric: str, *matchers: str, pool: bool = True) -> str:
    """``metric{job=~"$job", instance=~"$instance"[, pool=~"$pool"], matchers...}``."""
    return metric + "{" + ", ".join([POOL if pool else JOB, *matchers]) + "}"


def server_m(metric: str, *matchers: str) -> str:
    """``metric{job=~"$server_job", instance=~"$server_instance", matchers...}``."""
    return metric + "{" + ", ".join([SERVER, *matchers]) + "}"


def target(expr: str, legend: str = "", *, ref: str = "A", heatmap: bool = False) -> Json:
    """A Prometheus query of a panel."""
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "format": "heatmap" if heatmap else "time_series",
        "legendFormat": legend or "__auto",
        "range": True,
        "refId": ref,
    }


def targets(*queries: tuple[str, str]) -> list[Json]:
    """Targets A, B, C... from (expr, legend) pairs."""
    return [target(expr, legend, ref=chr(ord("A") + i)) for i, (expr, legend) in enumerate(queries)]


def datasource_variable() -> Json:
    """The ``datasource`` variable every panel uses (no ``__inputs``: file provisioning works)."""
    return {
        "current": {},
        "hide": 0,
        "includeAll": False,
        "label": "Data Source",
        "multi": False,
        "name": "datasource",
        "options": [],
        "query": "prometheus",
        "refresh": 1,
        "regex": "",
        "type": "datasource",
    }


def query_variable(name: str, label: str, query: str, description: str = "") -> Json:
    """A multi-select label variable whose "All" matches every value (``.+``), selected by
    default."""
    return {
        "allValue": ".+",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": DATASOURCE,
        "definition": query,
        **({"description": description} if description else {}),
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "type": "query",
    }


def _thresholds(steps: list[tuple[str, float | None]]) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


GREEN: list[tuple[str, float | None]] = [("green", None)]

# Series whose legend ends in "capacity" or "limit" are drawn as dashed red lines.
CAPACITY_OVERRIDE: Json = {
    "matcher": {"id": "byRegexp", "options": ".*(capacity|limit).*"},
    "properties": [
        {"id": "custom.lineStyle", "value": {"dash": [10, 10], "fill": "dash"}},
        {"id": "custom.fillOpacity", "value": 0},
        {"id": "color", "value": {"fixedColor": "red", "mode": "fixed"}},
    ],
}


def timeseries(
    title: str,
    description: str,
    unit: str,
    queries: list[Json],
    *,
    width: int = 12,
    height: int = 8,
    stack: bool = False,
    capacity: bool = False,
) -> Json:
    """A time series panel."""
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "palette-classic"},
                "custom": {
                    "drawStyle": "line",
                    "fillOpacity": 10,
                    "lineWidth": 1,
                    "showPoints": "never",
                    "spanNulls": False,
                    "stacking": {"group": "A", "mode": "normal" if stack else "none"},
                },
                "min": 0,
                "thresholds": _thresholds(GREEN),
                "unit": unit,
            },
            "overrides": [CAPACITY_OVERRIDE] if capacity else [],
        },
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "options": {
            "legend": {
                "calcs": ["max", "lastNotNull"],
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": queries,
        "title": title,
        "type": "timeseries",
    }


def stat(
    title: str,
    description: str,
    unit: str,
    expr: str,
    *,
    steps: list[tuple[str, float | None]] | None = None,
    width: int = 6,
    height: int = 4,
) -> Json:
    """A single-value panel coloured by thresholds."""
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "thresholds": _thresholds(steps or GREEN),
                "unit": unit,
            },
            "overrides": [],
        },
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "options": {
            "colorMode": "background",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        },
        "targets": [target(expr)],
        "title": title,
        "type": "stat",
    }


def heatmap(title: str, description: str, expr: str, *, width: int = 12, height: int = 8) -> Json:
    """A heatmap of a histogram's buckets (already bucketed by Prometheus: no calculation)."""
    return {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": {"unit": "s"}, "overrides": []},
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {"exponent": 0.5, "mode": "scheme", "scheme": "Oranges", "steps": 64},
            "legend": {"show": True},
            "tooltip": {"mode": "single", "yHistogram": True},
            "yAxis": {"axisPlacement": "left", "unit": "s"},
        },
        "targets": [target(expr, "{{le}}", heatmap=True)],
        "title": title,
        "type": "heatmap",
    }


def alert_list(title: str, description: str, *, width: int = 24, height: int = 6) -> Json:
    """The pool-observer alerts that are pending or firing now."""
    return {
        "description": description,
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "options": {
            "alertInstanceLabelFilter": "",
            "alertName": "SQLAlchemy",
            "dashboardAlerts": False,
            "groupBy": [],
            "groupMode": "default",
            "maxItems": 20,
            "sortOrder": 1,
            "stateFilter": {
                "error": True,
                "firing": True,
                "noData": False,
                "normal": False,
                "pending": True,
            },
            "viewMode": "list",
        },
        "title": title,
        "type": "alertlist",
    }


def row(title: str) -> Json:
    """A row header spanning the dashboard."""
    return {
        "collapsed": False,
        "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": 0},
        "panels": [],
        "title": title,
        "type": "row",
    }


@dataclass
class Layout:
    """Places panels left to right, wrapping at the grid width, and numbers them."""

    panels: list[Json] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _row_height: int = 0

    def add(self, *panels: Json) -> None:
        """Append panels at the next free position."""
        for panel in panels:
            pos = panel["gridPos"]
            if panel["type"] == "row" or self._x + pos["w"] > GRID_WIDTH:
                self._y += self._row_height
                self._x, self._row_height = 0, 0
            pos["x"], pos["y"] = self._x, self._y
            panel["id"] = len(self.panels) + 1
            self.panels.append(panel)
            self._x += pos["w"]
            self._row_height = max(self._row_height, pos["h"])
            if panel["type"] == "row":
                self._y += pos["h"]
                self._x, self._row_height = 0, 0


def annotation(name: str, expr: str, title: str, color: str, *, tags: str = "") -> Json:
    """A Prometheus annotation: a marker at every point ``expr`` returns (so it returns points
    only at the moments to mark); ``title`` is a legend-style template of the labels."""
    return {
        "datasource": DATASOURCE,
        "enable": True,
        "hide": False,
        "iconColor": color,
        "name": name,
        "step": "1m",
        "tagKeys": tags,
        "target": {"expr": expr, "refId": "Anno"},
        "textFormat": "",
        "titleFormat": title,
        "useValueForTime": False,
    }


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: list[Json],
    layout: Layout,
    links: list[Json],
    annotations: tuple[Json, ...] = (),
) -> Json:
    """The dashboard around its panels."""
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                *annotations,
            ]
        },
        "description": description,
        "editable": False,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": links,
        "panels": layout.panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["pool-observer", "sqlalchemy"],
        "templating": {"list": variables},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
    }


def all_panels(board: Json) -> list[Json]:
    """Every panel of a dashboard, those nested in collapsed rows included, rows excluded."""
    found: list[Json] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def queries(board: Json) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of a dashboard, Grafana variables unsubstituted."""
    return [
        (panel["title"], query["expr"])
        for panel in all_panels(board)
        for query in panel.get("targets", [])
    ]
