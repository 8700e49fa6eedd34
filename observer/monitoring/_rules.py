"""Recording rules: the heavy expressions (per-pool ratios, histogram quantiles) evaluated once."""

from __future__ import annotations

from typing import Any

from observer.monitoring.config import MonitoringConfig

GROUP = "pool-observer.rules"
POOL = "job, instance, pool"


def utilization(config: MonitoringConfig) -> str:
    """Name of the recorded checked-out / max-connections ratio (bounded pools only)."""
    return "job_instance_pool:sqlalchemy_pool_checked_out_per_max_connections:ratio"


def p99(metric: str, config: MonitoringConfig) -> str:
    """Name of the recorded p99 of a per-pool histogram over ``rate_window``."""
    return f"job_instance_pool:{metric}:p99_rate{config.rate_window}"


def recording_rules(config: MonitoringConfig) -> list[dict[str, Any]]:
    """The recording rules, in evaluation order."""
    sel = config.selector()
    rules: list[dict[str, Any]] = [
        {
            "record": utilization(config),
            # Divide series by series before aggregating: in multiprocess mode the gauges
            # carry a pid label (one pool per worker), and the busiest worker is what matters.
            # `> 0` drops unbounded pools (max_connections is -1 when max_overflow=-1).
            "expr": (
                f"max by ({POOL}) (\n"
                f"  sqlalchemy_pool_checked_out_connections{sel}\n"
                f"  / (sqlalchemy_pool_max_connections{sel} > 0)\n"
                ")"
            ),
        },
    ]
    for metric in (
        "sqlalchemy_pool_checkout_duration_seconds",
        "sqlalchemy_pool_connection_hold_seconds",
    ):
        rules.append(
            {
                "record": p99(metric, config),
                "expr": (
                    "histogram_quantile(0.99,\n"
                    f"  sum by ({POOL}, le) (rate({metric}_bucket{sel}[{config.rate_window}]))\n"
                    ")"
                ),
            }
        )
    return rules


def rule_groups(config: MonitoringConfig) -> dict[str, Any]:
    """The content of the recording-rules file."""
    return {"groups": [{"name": GROUP, "rules": recording_rules(config)}]}
