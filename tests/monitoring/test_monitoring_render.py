"""The generated files are what `observer render` produces, and rendering is configurable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from observer.cli import main
from observer.monitoring import _render as render
from observer.monitoring.config import MonitoringConfig
from tests.monitoring.shipped import ROOT


def test_committed_files_are_exactly_a_fresh_render(tmp_path: Path) -> None:
    """Rendering the default configuration again reproduces every committed file byte for byte."""
    assert main(["render", "--out", str(tmp_path)]) == 0
    rendered = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*"))
    committed = sorted(
        p.relative_to(ROOT).as_posix()
        for pattern in ("alerts/*.yaml", "dashboards/*.json")
        for p in ROOT.glob(pattern)
    )
    assert rendered == committed
    for relative in rendered:
        assert (tmp_path / relative).read_bytes() == (ROOT / relative).read_bytes(), relative


def test_check_reports_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`observer render --check` exits 0 on fresh files and 1, naming the file, on a stale one."""
    assert main(["render", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["render", "--out", str(tmp_path), "--check"]) == 0
    (tmp_path / render.RULES_FILE).write_text("groups: []\n")
    assert main(["render", "--out", str(tmp_path), "--check"]) == 1
    assert capsys.readouterr().err == (
        f"stale: {render.RULES_FILE} (run: observer render --out {tmp_path})\n"
    )


def test_selector_thresholds_and_links_can_be_overridden(tmp_path: Path) -> None:
    """Job selector, thresholds, for: durations, runbook and dashboard URLs reach the rules."""
    code = main(
        [
            "render",
            "--out",
            str(tmp_path),
            "--job-selector",
            'job="checkout-api"',
            "--runbook-url",
            "https://wiki.example.com/db",
            "--dashboard-url",
            "https://grafana.example.com/",
            "--set",
            "saturation_ratio=0.9",
            "--set",
            "saturation_for=30m",
        ]
    )
    assert code == 0
    groups = yaml.safe_load((tmp_path / render.ALERTS_FILE).read_text())["groups"]
    rule = {r["alert"]: r for g in groups for r in g["rules"]}["SQLAlchemyPoolSaturationHigh"]
    assert rule["expr"] == (
        "job_instance_pool:sqlalchemy_pool_checked_out_per_max_connections:ratio > 0.9"
    )
    assert rule["for"] == "30m"
    assert rule["annotations"]["runbook_url"] == (
        "https://wiki.example.com/db#sqlalchemypoolsaturationhigh"
    )
    assert rule["annotations"]["dashboard_url"] == (
        "https://grafana.example.com/d/pool-observer-pools?var-job={{ $labels.job }}"
        "&var-instance={{ $labels.instance }}&var-pool={{ $labels.pool }}"
    )
    recorded = yaml.safe_load((tmp_path / render.RULES_FILE).read_text())["groups"][0]
    assert 'sqlalchemy_pool_max_connections{job="checkout-api"} > 0' in recorded["rules"][0]["expr"]
    board = json.loads((tmp_path / "dashboards/pool-observer-pools.json").read_text())
    job = board["templating"]["list"][1]
    assert job["definition"] == 'label_values(sqlalchemy_pools{job="checkout-api"}, job)'
    server_job = board["templating"]["list"][4]
    assert server_job["definition"] == 'label_values(pg_up{job="checkout-api"}, job)'


def test_the_server_selector_reaches_the_server_view_only(tmp_path: Path) -> None:
    """A sidecar scraped as a job of its own: --server-selector selects the server alert and
    the server variables; the app's selector and variables stay; dashboard links set the
    server variables."""
    args = ["render", "--out", str(tmp_path), "--job-selector", 'job="api"']
    args += ["--server-selector", 'job="pg-sidecar"']
    args += ["--dashboard-url", "https://grafana.example.com"]
    assert main(args) == 0
    groups = yaml.safe_load((tmp_path / render.ALERTS_FILE).read_text())["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    idle = rules["SQLAlchemyServerIdleInTransaction"]
    assert 'pg_observer_idle_in_transaction_max_seconds{job="pg-sidecar"}' in idle["expr"]
    assert idle["annotations"]["dashboard_url"] == (
        "https://grafana.example.com/d/pool-observer-pools?"
        "var-server_job={{ $labels.job }}&var-server_instance={{ $labels.instance }}"
    )
    assert 'sqlalchemy_pools{job="api"}' in rules["SQLAlchemyMetricsAbsent"]["expr"]
    board = json.loads((tmp_path / "dashboards/pool-observer-pools.json").read_text())
    definitions = {v["name"]: v.get("definition") for v in board["templating"]["list"]}
    assert definitions == {
        "datasource": None,
        "job": 'label_values(sqlalchemy_pools{job="api"}, job)',
        "instance": 'label_values(sqlalchemy_pools{job="api", job=~"$job"}, instance)',
        "pool": 'label_values(sqlalchemy_pool_max_connections{job="api", '
        'job=~"$job", instance=~"$instance"}, pool)',
        "server_job": 'label_values(pg_up{job="pg-sidecar"}, job)',
        "server_instance": 'label_values(pg_up{job="pg-sidecar", job=~"$server_job"}, instance)',
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"exhausted_for": "5 minutes"}, "exhausted_for: '5 minutes' is not a Prometheus duration"),
        ({"long_hold_seconds": 0.0}, "long_hold_seconds must be a finite number > 0 (got 0.0)"),
        ({"saturation_ratio": 1.0}, "saturation_ratio must be between 0 and 1 (got 1.0)"),
        ({"job_selector": '{job="api"}'}, "job_selector takes label matchers without braces"),
        ({"job_selector": " "}, "job_selector must not be empty"),
        ({"absent_for": "1m", "scrape_interval": "1m"}, "absent_for (1m) must be at least two"),
        ({"runbook_url": "docs/runbooks.md"}, "runbook_url must be an http(s) URL"),
    ],
)
def test_invalid_settings_fail_naming_the_option(changes: dict[str, object], message: str) -> None:
    """A wrong setting fails at once with a message that names the option."""
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        MonitoringConfig(**changes)  # type: ignore[arg-type]


def test_cli_reports_an_invalid_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`observer render` exits 2 with the validation message and writes nothing."""
    assert main(["render", "--out", str(tmp_path), "--set", "exhausted_for=soon"]) == 2
    assert capsys.readouterr().err == (
        "observer render: exhausted_for: 'soon' is not a Prometheus duration "
        "(e.g. 30s, 5m, 1h30m)\n"
    )
    assert list(tmp_path.iterdir()) == []
    assert main(["render", "--out", str(tmp_path), "--set", "saturation_ratio=high"]) == 2
    assert capsys.readouterr().err == (
        "observer render: saturation_ratio must be a number (got 'high')\n"
    )


@pytest.mark.promtool
def test_a_custom_render_still_passes_promtool(promtool: str, tmp_path: Path) -> None:
    """Rules rendered with another selector, windows and thresholds are valid and lint-clean."""
    args = ["render", "--out", str(tmp_path), "--job-selector", 'job="api", namespace="prod"']
    for setting in ("rate_window=2m", "leaks_window=30m", "invalidations_threshold=2.5"):
        args += ["--set", setting]
    assert main(args) == 0
    result = subprocess.run(
        [
            promtool,
            "check",
            "rules",
            "--lint=all",
            "--lint-fatal",
            str(tmp_path / render.RULES_FILE),
            str(tmp_path / render.ALERTS_FILE),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (tmp_path / render.ALERTS_FILE).read_text()
    assert "job_instance_pool:sqlalchemy_pool_checkout_duration_seconds:p99_rate2m > 0.5" in text
    assert 'sqlalchemy_orm_session_leaks_total{job="api", namespace="prod"}[30m]' in text
    assert ") > 2.5\n" in text


# Selectors the renderer accepts and refuses; promtool is the judge of which are PromQL.
ACCEPTED_SELECTORS = ['job="api"', "job='api'", "job=`a\\pi`", 'job=~"api\\\\d"',
                      'job="a", env!~"x|y"', ' job = "a" ', 'job="a\\"b"']  # fmt: skip
REFUSED_SELECTORS = ['"', "job=api", 'job=~"api\\d"', 'job="a",', 'job="', '="a"', "job=='a'"]


@pytest.mark.promtool
def test_selectors_are_checked_as_promql_does(promtool: str, tmp_path: Path) -> None:
    """A selector the renderer accepts parses in promtool inside {..., more="matchers"}, and
    one it refuses (exit 0 with output promtool rejects, before) fails there too."""
    from observer.monitoring.config import check_selector

    def promtool_accepts(selector: str) -> bool:
        rules = tmp_path / "rules.yaml"
        expr = json.dumps(f'up{{{selector}, pool="main"}}')
        rules.write_text(f"groups:\n- name: t\n  rules:\n  - record: x\n    expr: {expr}\n")
        result = subprocess.run(
            [promtool, "check", "rules", str(rules)], capture_output=True, check=False
        )
        return result.returncode == 0

    def renderer_accepts(selector: str) -> bool:
        try:
            check_selector("job_selector", selector)
        except ValueError:
            return False
        return True

    verdicts = {s: (renderer_accepts(s), promtool_accepts(s)) for s in ACCEPTED_SELECTORS}
    assert verdicts == {s: (True, True) for s in ACCEPTED_SELECTORS}
    verdicts = {s: (renderer_accepts(s), promtool_accepts(s)) for s in REFUSED_SELECTORS}
    assert verdicts == {s: (False, False) for s in REFUSED_SELECTORS}


def test_source_url_links_the_leaking_code_lines(tmp_path: Path) -> None:
    """--source-url: the sessions dashboard's table builds each line's URL in its query and
    links the line cell to it; without it the table has no link and says how to get one."""
    template = "https://github.com/org/shop/blob/main/backend/{path}#L{line}"
    assert main(["render", "--out", str(tmp_path), "--source-url", template]) == 0

    def table(board: Path) -> Any:
        panels = json.loads(board.read_text())["panels"]
        return next(p for p in panels if p["title"] == "Leaking code lines")

    linked = table(tmp_path / "dashboards/pool-observer-sessions.json")
    expr = linked["targets"][0]["expr"]
    assert expr.endswith(
        '"url", "https://github.com/org/shop/blob/main/backend/${1}#L${2}", "origin", '
        '"(.+):([0-9]+) in .+"\n)'
    )
    origin = linked["fieldConfig"]["overrides"][0]
    assert origin["matcher"] == {"id": "byName", "options": "origin"}
    assert origin["properties"][1] == {
        "id": "links",
        "value": [{"targetBlank": True, "title": "Open the source", "url": "${__data.fields.url}"}],
    }
    shipped = table(ROOT / "dashboards/pool-observer-sessions.json")
    assert '"url"' not in shipped["targets"][0]["expr"]
    assert [p["id"] for p in shipped["fieldConfig"]["overrides"][0]["properties"]] == [
        "displayName"
    ]
    assert str(shipped["description"]).endswith(
        "Render with --source-url to link each line to its source."
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source-url", "https://ci:gh-Secret-pw@github.com/o/r/blob/main/{path}#L{line}"],
         "--source-url must not hold a user or password (got 'https://***@github.com/o/r/blob/"
         "main/{path}#L{line}'): the rendered files are read by whoever sees them"),
        (["--source-url", "https://ci:gh-Secret-pw@github.com/o/r/{line}"],
         "--source-url must not hold a user or password"),
        (["--runbook-url", "https://ci:gh-Secret-pw@wiki.example.com/runbooks"],
         "--runbook-url must not hold a user or password"),
        # a '/', '?' or '#' in the password ends the authority before its '@': still masked
        (["--source-url", "https://ci:gh-Secret-pw/x@github.com/o/r/blob/main/{path}#L{line}"],
         "--source-url must be an http(s) URL with a host name (and a port number, if any), "
         "such as https://github.com/org/repo/blob/main/{path}#L{line} (got "
         "'https://***@github.com/o/r/blob/main/{path}#L{line}')"),
        (["--source-url", "https://ci:gh-Secret-pw?x@github.com/{path}"],
         "(got 'https://***@github.com/{path}')"),
        (["--dashboard-url", "https://ci:gh-Secret-pw#x@grafana.example.com/d"],
         "(got 'https://***@grafana.example.com/d')"),
        (["--source-url", "https://{path}#L{line}"],
         "--source-url must be an http(s) URL with a host name (and a port number, if any), "
         "such as https://github.com/org/repo/blob/main/{path}#L{line} (got "
         "'https://{path}#L{line}')"),
        (["--source-url", "https://git.example.com:{line}/{path}"],
         "--source-url must be an http(s) URL with a host name (and a port number, if any)"),
        (["--source-url", "http:///{path}"], "--source-url must be an http(s) URL with a host"),
        (["--source-url", "https://git.example.com/\u00fcber/{path}"],
         "--source-url must be an http(s) URL without spaces, control or non-ASCII characters "
         "(percent-encode them)"),
    ],
)  # fmt: skip
def test_a_link_with_credentials_or_without_a_host_is_refused(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """user:password@ in a link was written into the dashboards (and echoed by any other error
    about it); a template whose host is a placeholder, or empty, rendered links that go nowhere;
    a non-ASCII character was called a space. One line, exit 2, nothing written."""
    code = main(["render", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert "gh-Secret-pw" not in err, err
    assert err.count("\n") == 1, err  # argparse: usage, then the one-line error
    assert not any(tmp_path.iterdir())
