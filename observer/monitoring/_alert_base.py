"""What every alert rule is made of: the rule, its dashboard link and the shared templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from observer.monitoring.config import MonitoringConfig

Severity = Literal["critical", "warning", "info"]

POOL_DASHBOARD = "pool-observer-pools"
SESSIONS_DASHBOARD = "pool-observer-sessions"


@dataclass(frozen=True)
class Alert:
    """One alerting rule; ``summary`` is static, ``description`` a Prometheus template."""

    name: str
    expr: str
    for_: str
    severity: Severity
    summary: str
    description: str
    dashboard: str
    # Labels from the sidecar's target: the dashboard link sets the server_* variables.
    server: bool = False
    # Per database server, over every job: the dashboard link sets no variable.
    per_server: bool = False

    def rule(self, config: MonitoringConfig) -> dict[str, Any]:
        """The rule as it goes into the rules file."""
        annotations = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": config.runbook(self.name),
        }
        if config.dashboard_url:
            prefix = "var-server_" if self.server else "var-"
            query = f"{prefix}job={{{{ $labels.job }}}}&{prefix}instance={{{{ $labels.instance }}}}"
            if "$labels.pool" in self.description:
                query += "&var-pool={{ $labels.pool }}"
            base = config.dashboard_url.rstrip("/")
            link = f"{base}/d/{self.dashboard}"
            annotations["dashboard_url"] = link if self.per_server else f"{link}?{query}"
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": annotations,
        }


def increase_over(metric: str, selector: str, window: str, by: str, threshold: float) -> str:
    # A labelled child appears on its first increment (value 1), and increase() takes a
    # series' first sample as its baseline: a series that did not exist `window` ago counts
    # with its whole value, an older one with its increase.
    return (
        f"sum by ({by}) (\n"
        f"  ({metric}{selector} unless {metric}{selector} offset {window})\n"
        f"  or (increase({metric}{selector}[{window}]) > 0)\n"
        f") > {threshold:g}"
    )


def where(pool: bool = True) -> str:
    where = "{{ $labels.job }} on {{ $labels.instance }}"
    return "Pool {{ $labels.pool }} of " + where if pool else where


COUNT = '{{ $value | printf "%.0f" }}'
