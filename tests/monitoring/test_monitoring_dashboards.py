"""The shipped dashboards follow the rules ported from mixtool and grafana/dashboard-linter."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from observer.monitoring._names import SIDECAR_METRICS
from observer.monitoring._panels import DATASOURCE, SCHEMA_VERSION, all_panels, queries
from tests.monitoring.shipped import DASHBOARDS

UNIT_PANELS = {"timeseries", "stat", "gauge", "heatmap", "bargauge"}
RATE_RANGE = re.compile(r"\b(rate|irate|increase)\((.*?)\[([^\]]+)\]")
SELECTOR = re.compile(r"\b([a-z_:][a-z0-9_:]*)\{([^}]*)\}")
VARIABLE = re.compile(r"\$\{?(\w+)")


def test_the_three_dashboards_ship_with_stable_uids(dashboards: dict[str, Any]) -> None:
    """Pools, sessions and routes dashboards, each uid equal to its file name."""
    assert sorted(dashboards) == [
        "pool-observer-pools.json",
        "pool-observer-routes.json",
        "pool-observer-sessions.json",
    ]
    for name, board in dashboards.items():
        assert board["uid"] == name.removesuffix(".json")
        assert len(board["uid"]) <= 40  # Grafana's uid limit


def test_dashboards_are_provisionable_code(dashboards: dict[str, Any]) -> None:
    """Titles, tags, not editable, pinned schemaVersion, no __inputs nor ${DS_...} anywhere."""
    for path in DASHBOARDS:
        assert "__inputs" not in path.read_text()
        assert "${DS_" not in path.read_text()
    for board in dashboards.values():
        assert board["title"].startswith("pool-observer / ")
        assert board["tags"] == ["pool-observer", "sqlalchemy"]
        assert board["editable"] is False
        assert board["schemaVersion"] == SCHEMA_VERSION == 39
        assert board["links"][0]["title"] == "Runbooks"


def test_datasource_variable(dashboards: dict[str, Any]) -> None:
    """Exactly one datasource variable, named datasource, labelled Data Source, of Prometheus."""
    for board in dashboards.values():
        found = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
        assert len(found) == 1
        assert (found[0]["name"], found[0]["label"], found[0]["query"]) == (
            "datasource",
            "Data Source",
            "prometheus",
        )


def test_job_instance_pool_and_server_variables(dashboards: dict[str, Any]) -> None:
    """job, instance (pool, server_job and server_instance for pools): multi-select, All is .+
    and selected by default, reload on time change."""
    for name, board in dashboards.items():
        variables = {v["name"]: v for v in board["templating"]["list"] if v["type"] == "query"}
        expected = (
            ["job", "instance", "pool", "server_job", "server_instance"]
            if name == "pool-observer-pools.json"
            else ["job", "instance"]
        )
        assert list(variables) == expected
        for variable in variables.values():
            assert variable["multi"] is True
            assert variable["includeAll"] is True
            assert variable["allValue"] == ".+"
            assert variable["current"] == {"selected": True, "text": ["All"], "value": ["$__all"]}
            assert variable["refresh"] == 2
            assert variable["datasource"] == DATASOURCE
            assert variable["definition"] == variable["query"]["query"]


def test_server_variables_list_the_sidecars_targets(dashboards: dict[str, Any]) -> None:
    """server_job and server_instance come from pg_up (the sidecar's), chained like job and
    instance, so the server view works whether the sidecar is the app's target or its own job."""
    board = dashboards["pool-observer-pools.json"]
    variables = {
        v["name"]: v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"
    }
    assert variables["server_job"] == 'label_values(pg_up{job!=""}, job)'
    assert variables["server_instance"] == (
        'label_values(pg_up{job!="", job=~"$server_job"}, instance)'
    )


def test_variables_are_defined_before_use_and_all_used(dashboards: dict[str, Any]) -> None:
    """Every variable a query names exists (defined before any variable query using it), and
    every variable is used by a panel or by another variable (dashboard-linter template rules)."""
    for name, board in dashboards.items():
        defined: list[str] = []
        used: set[str] = set()
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                names = set(VARIABLE.findall(variable["query"]["query"])) - {"datasource"}
                assert names <= set(defined), (name, variable["name"], names)
                used |= names
            defined.append(variable["name"])
        for panel in all_panels(board):
            for target in panel.get("targets", []):
                names = set(VARIABLE.findall(target["expr"]))
                names -= {"__rate_interval", "__interval", "__range"}
                assert names <= set(defined), (name, panel["title"], names)
                used |= names
            if panel.get("targets"):
                used.add(panel["datasource"]["uid"].strip("${}"))
        assert set(defined) == used, name


def test_every_panel_has_title_description_unit_and_templated_datasource(
    dashboards: dict[str, Any],
) -> None:
    """dashboard-linter panel-title-description, panel-units and panel-datasource rules."""
    for board in dashboards.values():
        for panel in all_panels(board):
            assert panel["title"], panel
            assert len(panel["description"]) > 20, panel["title"]
            if panel["type"] in UNIT_PANELS:
                assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
            for target in panel.get("targets", []):
                assert panel["datasource"] == target["datasource"] == DATASOURCE


def test_every_selector_filters_on_job_and_instance(dashboards: dict[str, Any]) -> None:
    """dashboard-linter target-job and target-instance rules, for every selector of a target:
    app metrics follow $job and $instance, the sidecar's server view $server_job and
    $server_instance (never the app's: the sidecar may be scraped as a job of its own); the
    fleet's recorded series, summed over instances, follow $job (per job) or none (per server)."""
    server = fleet = 0
    for board in dashboards.values():
        for title, expr in queries(board):
            selectors = SELECTOR.findall(expr)
            assert selectors, title
            for metric, matchers in selectors:
                # The fleet's recorded series sum every instance: per job, or per database
                # server over every job (only the servers known).
                if metric.startswith("job_server:"):
                    assert matchers == 'job=~"$job"', (title, expr)
                    fleet += 1
                    continue
                if metric.startswith("server:"):
                    assert matchers == 'server!=""', (title, expr)
                    fleet += 1
                    continue
                prefix = "server_" if metric in SIDECAR_METRICS else ""
                server += prefix == "server_"
                assert f'job=~"${prefix}job"' in matchers, (title, expr)
                assert f'instance=~"${prefix}instance"' in matchers, (title, expr)
    assert server == 6
    assert fleet == 6


def test_pool_metrics_filter_on_the_pool_variable(dashboards: dict[str, Any]) -> None:
    """On the pools dashboard, every pool-labelled metric follows the pool variable."""
    board = dashboards["pool-observer-pools.json"]
    for title, expr in queries(board):
        for metric, matchers in SELECTOR.findall(expr):
            if metric.startswith("sqlalchemy_pool_"):
                assert 'pool=~"$pool"' in matchers, (title, metric)


def test_rates_use_rate_interval(dashboards: dict[str, Any]) -> None:
    """dashboard-linter target-rate-interval rule: rate/irate/increase over $__rate_interval,
    but in the instant queries of tables, which count over the whole range ($__range)."""
    checked = calls = 0
    for board in dashboards.values():
        for panel in all_panels(board):
            for target in panel.get("targets", []):
                expr = target["expr"]
                calls += len(re.findall(r"\b(?:rate|irate|increase)\(", expr))
                table = panel["type"] == "table" and target.get("instant") is True
                for _fn, _arg, window in RATE_RANGE.findall(expr):
                    assert window == ("$__range" if table else "$__rate_interval"), expr
                    checked += 1
    assert checked == calls == 43  # 38 over $__rate_interval, 5 over $__range (the table)


def test_tables_count_over_the_range_in_one_instant_query(dashboards: dict[str, Any]) -> None:
    """The leaking code lines table: one instant query in table format whose offsets and
    ranges are the dashboard's range, line first and most leaks first."""
    tables = [
        panel
        for board in dashboards.values()
        for panel in all_panels(board)
        if panel["type"] == "table"
    ]
    assert [panel["title"] for panel in tables] == ["Leaking code lines"]
    [table] = tables
    [target] = table["targets"]
    assert (target["format"], target["instant"], target["range"]) == ("table", True, False)
    assert re.findall(r"offset (\S+)\)", target["expr"]) == ["$__range"] * 5
    order = table["transformations"][0]["options"]["indexByName"]
    assert sorted(order, key=order.__getitem__) == [
        "origin",
        "reason",
        "route",
        "instance",
        "Value",
    ]
    assert table["options"]["sortBy"] == [{"desc": True, "displayName": "leaks"}]


def test_heatmaps_show_prometheus_buckets(dashboards: dict[str, Any]) -> None:
    """Heatmaps read the buckets as they are (format heatmap, no calculation, {{le}} legend)."""
    heatmaps = [
        panel
        for board in dashboards.values()
        for panel in all_panels(board)
        if panel["type"] == "heatmap"
    ]
    assert [panel["title"] for panel in heatmaps] == ["Checkout wait", "Session duration"]
    for panel in heatmaps:
        assert panel["options"]["calculate"] is False
        assert [(t["format"], t["legendFormat"]) for t in panel["targets"]] == [
            ("heatmap", "{{le}}")
        ]


def test_capacity_is_drawn_next_to_usage(dashboards: dict[str, Any]) -> None:
    """The connections panel has pool_size and max capacity lines, drawn dashed."""
    panel = next(
        p
        for p in all_panels(dashboards["pool-observer-pools.json"])
        if p["title"] == "Connections vs capacity"
    )
    legends = [t["legendFormat"] for t in panel["targets"]]
    assert legends[-2:] == [
        "{{instance}} {{pool}} pool_size capacity",
        "{{instance}} {{pool}} max capacity",
    ]
    override = panel["fieldConfig"]["overrides"][0]
    assert override["matcher"] == {"id": "byRegexp", "options": ".*(capacity|limit).*"}
    assert override["properties"][0] == {
        "id": "custom.lineStyle",
        "value": {"dash": [10, 10], "fill": "dash"},
    }


def test_every_dashboard_lists_the_alerts(dashboards: dict[str, Any]) -> None:
    """Each dashboard has an alert list panel filtered to the SQLAlchemy alerts."""
    for board in dashboards.values():
        lists = [p for p in all_panels(board) if p["type"] == "alertlist"]
        assert len(lists) == 1
        assert lists[0]["options"]["alertName"] == "SQLAlchemy"


def test_panel_ids_are_unique_and_the_grid_has_no_overlap(dashboards: dict[str, Any]) -> None:
    """Unique panel ids; every gridPos inside the 24 columns; no two panels overlap."""
    for board in dashboards.values():
        panels = board["panels"]
        assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
        cells: set[tuple[int, int]] = set()
        for panel in panels:
            pos = panel["gridPos"]
            assert pos["x"] >= 0
            assert pos["x"] + pos["w"] <= 24
            area = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not cells & area, panel["title"]
            cells |= area


def test_dashboard_json_is_stably_formatted() -> None:
    """Two-space indented JSON with a final newline (clean diffs on regeneration)."""
    for path in DASHBOARDS:
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=2) + "\n"


def test_provisioning_examples() -> None:
    """The provider reads JSON files from a directory; the data source is a Prometheus one."""
    provisioning = DASHBOARDS[0].parent / "provisioning"
    assert sorted(p.name for p in provisioning.iterdir()) == ["dashboards.yaml", "datasources.yaml"]
    providers = yaml.safe_load((provisioning / "dashboards.yaml").read_text())
    assert providers["apiVersion"] == 1
    assert [(p["type"], p["allowUiUpdates"]) for p in providers["providers"]] == [("file", False)]
    assert (
        providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/pool-observer"
    )
    sources = yaml.safe_load((provisioning / "datasources.yaml").read_text())
    assert sources["apiVersion"] == 1
    [source] = sources["datasources"]
    assert (source["type"], source["access"], source["isDefault"]) == ("prometheus", "proxy", True)
    assert source["jsonData"]["timeInterval"] == "15s"
