"""The sessions dashboard's "Leaking code lines" table: line, reason, route, leaks in the range.

The origin counter has no route label (lines times routes would multiply its series), so the
query pairs each line with the routes that leaked with the same reason on the same instance in
the range: both counters count every leak at the same moment in the same process, so while one
route leaks with a reason there, that route is the line's own. When several do, PromQL cannot
tell which line belongs to which (it has no many-to-many join), and the row says so instead of
guessing; the ``session.leak`` log pairs them. docs/dashboards.md explains the choice.
"""

from __future__ import annotations

from observer.monitoring._panels import DATASOURCE, Json, m
from observer.monitoring.config import MonitoringConfig

SEVERAL_ROUTES = "several: see the session.leak log"
"""The route cell of a line whose reason several routes of its instance leaked with."""
_RANGE = "$__range"
_BY = "job, instance, reason"
# path/to/module.py:LINE in function (observer/sessions/_origin.py); other and unknown don't match
_ORIGIN = "(.+):([0-9]+) in .+"


def _new(selector: str) -> str:
    """Leaks in the dashboard's range; a series born in it counts whole (increase() would
    take its first sample as the baseline)."""
    return f"({selector} unless {selector} offset {_RANGE}) or increase({selector}[{_RANGE}])"


def leaking_lines_query(config: MonitoringConfig) -> str:
    """(instance, origin, reason, route[, url]) -> leaks in the range: one row per line and
    reason, its route when one route of its instance leaked with that reason, else
    :data:`SEVERAL_ROUTES`; ``url`` from ``config.source_url`` when one is set."""
    origins = m("sqlalchemy_orm_session_leak_origins_total", pool=False)
    leaks = m("sqlalchemy_orm_session_leaks_total", pool=False)
    lines = f"(sum by ({_BY}, origin) ({_new(origins)}) > 0)"
    routes = f"(sum by ({_BY}, route) ({_new(leaks)}) > 0)"
    count = f"count by ({_BY}) ({routes})"
    query = (
        f"sum by (instance, origin, reason, route) (\n"
        f"  {lines}\n"
        f"  + on ({_BY}) group_left (route) (0 * ({routes} and on ({_BY}) ({count} == 1)))\n"
        f"  or label_replace(\n"
        f"    {lines} and on ({_BY}) ({count} > 1),\n"
        f'    "route", "{SEVERAL_ROUTES}", "", ""\n'
        f"  )\n"
        f")"
    )
    if not config.source_url:
        return query
    # ${1} and ${2}: Go's regexp expansion (Grafana leaves $-names that are no variable alone)
    url = config.source_url.replace("{path}", "${1}").replace("{line}", "${2}")
    return f'label_replace(\n{query},\n"url", "{url}", "origin", "{_ORIGIN}"\n)'


def leaking_lines_table(config: MonitoringConfig, *, width: int = 24, height: int = 9) -> Json:
    """The table: an instant query over the dashboard's range, most leaks first; each line
    links to its source when ``config.source_url`` is set."""
    link = (
        "Each line links to its source."
        if config.source_url
        else "Render with --source-url to link each line to its source."
    )
    origin_props: list[Json] = [{"id": "displayName", "value": "line of code"}]
    if config.source_url:
        origin_props.append(
            {
                "id": "links",
                "value": [
                    {"targetBlank": True, "title": "Open the source", "url": "${__data.fields.url}"}
                ],
            }
        )
    return {
        "datasource": DATASOURCE,
        "description": "Leaks in the time range by the app line that began the leaked session's "
        "transaction (sqlalchemy_orm_session_leak_origins_total), with the route that leaked "
        "with the same reason on the same instance; when several routes did, the route cell "
        "says so and the session.leak log pairs lines and routes (docs/dashboards.md). " + link,
        "fieldConfig": {
            "defaults": {
                "custom": {"align": "auto", "cellOptions": {"type": "auto"}},
                "decimals": 0,
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]},
                "unit": "short",
            },
            "overrides": [
                {"matcher": {"id": "byName", "options": "origin"}, "properties": origin_props},
                {
                    "matcher": {"id": "byName", "options": "Value"},
                    "properties": [{"id": "displayName", "value": "leaks"}],
                },
                {
                    "matcher": {"id": "byName", "options": "url"},
                    "properties": [{"id": "custom.hidden", "value": True}],
                },
            ],
        },
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "options": {
            "cellHeight": "sm",
            "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
            "showHeader": True,
            "sortBy": [{"desc": True, "displayName": "leaks"}],
        },
        "targets": [
            {
                "datasource": DATASOURCE,
                "editorMode": "code",
                "expr": leaking_lines_query(config),
                "format": "table",
                "instant": True,
                "legendFormat": "__auto",
                "range": False,
                "refId": "A",
            }
        ],
        "title": "Leaking code lines",
        "transformations": [
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "indexByName": {
                        "origin": 0,
                        "reason": 1,
                        "route": 2,
                        "instance": 3,
                        "Value": 4,
                    },
                },
            }
        ],
        "type": "table",
    }
