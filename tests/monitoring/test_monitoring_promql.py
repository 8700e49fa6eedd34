"""Every shipped PromQL expression parses, and reads only metrics the code exports."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from observer.monitoring._names import (
    ALEMBIC_METRICS,
    EXPORTED_METRICS,
    SIDECAR_METRICS,
    series_names,
)
from tests.monitoring.promql import (
    dashboard_expressions,
    metric_names,
    rule_expressions,
    substitute,
)


def test_substitution_replaces_grafana_variables() -> None:
    """$__rate_interval becomes a duration, $var / ${var} / [[var]] match anything."""
    assert substitute('rate(x{job=~"$job", a=~"${pool:regex}", b=~"[[c]]"}[$__rate_interval])') == (
        'rate(x{job=~".+", a=~".+", b=~".+"}[1m])'
    )


def test_metric_names_are_extracted_without_labels_functions_or_keywords() -> None:
    """Only metric names come out: not label names, functions, keywords or numbers."""
    expr = (
        'sum by (job, le) (rate(a_bucket{job="x", le="1"}[5m])) / on (job) b > 0.5 '
        "and c:d:e unless f offset 1h"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c:d:e", "f"}


@pytest.mark.promtool
def test_every_expression_parses_with_promtool(promtool: str, tmp_path: Path) -> None:
    """Dashboard queries and variable selectors, loaded as recording rules, pass promtool."""
    expressions = dashboard_expressions()
    assert len(expressions) == 78  # 69 panel targets, 9 variable queries
    rules = [
        {"record": f"dashboard_check:expr_{i}", "expr": expr}
        for i, (_where, expr) in enumerate(expressions)
    ]
    path = tmp_path / "dashboard-expressions.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_every_metric_used_is_exported() -> None:
    """Rules and dashboards read only exported series (or our own recorded ones)."""
    recorded = {name for name, expr in rule_expressions() if ":" in name}
    allowed = (
        series_names(EXPORTED_METRICS)
        | series_names(SIDECAR_METRICS)
        | series_names(ALEMBIC_METRICS)
        | recorded
    )
    used: set[str] = set()
    for where, expr in [*rule_expressions(), *dashboard_expressions()]:
        names = metric_names(expr)
        assert names, where
        assert names <= allowed, (where, names - allowed)
        used |= names
    assert {name for name in used if ":" not in name} == {
        "sqlalchemy_pool_size",
        "sqlalchemy_pool_max_connections",
        "sqlalchemy_pool_checked_out_connections",
        "sqlalchemy_pool_checked_in_connections",
        "sqlalchemy_pool_overflow_connections",
        "sqlalchemy_pool_waiting_requests",
        "sqlalchemy_pools",
        "sqlalchemy_orm_sessions_open",
        "sqlalchemy_pool_checkout_duration_seconds_bucket",
        "sqlalchemy_pool_connection_hold_seconds_bucket",
        "sqlalchemy_pool_connect_duration_seconds_bucket",
        "sqlalchemy_orm_session_duration_seconds_bucket",
        "sqlalchemy_pool_checkouts_total",
        "sqlalchemy_pool_checkout_timeouts_total",
        "sqlalchemy_pool_connections_opened_total",
        "sqlalchemy_pool_connections_closed_total",
        "sqlalchemy_pool_connections_reclaimed_total",
        "sqlalchemy_pool_double_handouts_total",
        "sqlalchemy_pools_created_total",
        "sqlalchemy_orm_sessions_opened_total",
        "sqlalchemy_orm_sessions_closed_total",
        "sqlalchemy_orm_session_leaks_total",
        "sqlalchemy_orm_session_leaks_resolved_total",
        "sqlalchemy_orm_session_leak_origins_total",
        "sqlalchemy_pool_oldest_checkout_seconds",
        "sqlalchemy_route_connections_held",
        "sqlalchemy_route_oldest_checkout_seconds",
        "sqlalchemy_route_connection_hold_seconds_total",
        "sqlalchemy_route_connection_idle_seconds_total",
        "sqlalchemy_route_checkout_wait_seconds_total",
        "sqlalchemy_route_checkouts_total",
        "observer_hook_errors_total",
        "pg_up",
        "pg_settings_max_connections",
        "pg_settings_superuser_reserved_connections",
        "pg_settings_reserved_connections",
        "pg_stat_activity_count",
        "pg_stat_activity_max_tx_duration",
        "pg_observer_idle_in_transaction_max_seconds",
        "pg_observer_lock_waiting_backends",
        "pg_observer_lock_wait_max_seconds",
        "alembic_schema_revision_info",
        "alembic_schema_drift",
        "alembic_migrations_total",
        "alembic_migration_running",
    }
    assert recorded <= used
