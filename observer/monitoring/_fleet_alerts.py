"""Alerts on the fleet as its database server sees it: every replica and worker together."""

from __future__ import annotations

from observer.monitoring import _rules
from observer.monitoring._alert_base import POOL_DASHBOARD, Alert
from observer.monitoring.config import MonitoringConfig

_AVAILABLE = (
    "of the {{ with printf `" + _rules.AVAILABLE + '{server="%s"}` $labels.server | query }}'
    "{{ . | first | value | printf `%.0f` }}{{ end }} slots the server allows "
    "(max_connections minus the reserved ones;"
)


def fleet_alerts(config: MonitoringConfig) -> list[Alert]:
    """The fleet's pools can open more connections than the server allows, or nearly as many
    are open already (per server, over every job, replica and worker)."""
    c = config
    return [
        Alert(
            "SQLAlchemyFleetBudgetOverServerLimit",
            f"{_rules.share(_rules.BUDGET)} > {c.fleet_budget_ratio:g}",
            c.fleet_budget_for,
            "warning",
            "The pools of the fleet can open more connections than the server allows.",
            "Every live process's pool_size + max_overflow against {{ $labels.server }} adds "
            "up to {{ $value | humanizePercentage }} "
            f"{_AVAILABLE} threshold {c.fleet_budget_ratio:.0%}) for {c.fleet_budget_for}: at "
            "peak, or after one more scale-up, new connections fail with 'too many clients'. "
            "Lower the pool sizes, cap the replicas (observer doctor) or put PgBouncer in front.",
            POOL_DASHBOARD,
            per_server=True,
        ),
        Alert(
            "SQLAlchemyFleetConnectionsNearLimit",
            f"{_rules.share(_rules.OPEN)} > {c.fleet_connections_ratio:g}",
            c.fleet_connections_for,
            "critical",
            "The fleet's open connections approach the server's limit.",
            "The pools of every live process hold "
            f'{{{{ with printf `{_rules.per_server(_rules.OPEN)}{{server="%s"}}` '
            "$labels.server | query }}{{ . | first | value | printf `%.0f` }}{{ end }} "
            f"connections to {{{{ $labels.server }}}} open, {{{{ $value | humanizePercentage }}}} "
            f"{_AVAILABLE} threshold {c.fleet_connections_ratio:.0%}) for "
            f"{c.fleet_connections_for}: the next burst or replica gets 'too many clients'.",
            POOL_DASHBOARD,
            per_server=True,
        ),
    ]
