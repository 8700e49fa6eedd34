"""The fleet's connection budget: every live process's pools against their database server.

The panels read the fleet recording rules (observer.monitoring._rules.fleet_rules): a handful
of series per job and per server, however many replicas and workers the fleet runs.
"""

from __future__ import annotations

from observer.monitoring import _rules
from observer.monitoring._panels import Json, row, stat, targets, timeseries
from observer.monitoring.config import MonitoringConfig

KNOWN = '{server!=""}'  # per server: the pools whose server is known (docs/production.md)
BY_JOB = '{job=~"$job"}'


def fleet_row(config: MonitoringConfig) -> tuple[Json, ...]:
    """Budget vs server limit vs open, per server; the budget per job; the worst share."""
    budget, opened = _rules.BUDGET, _rules.OPEN
    return (
        row("Fleet connection budget, per database server"),
        stat(
            "Fleet budget / server limit",
            "The largest share of a server's available slots (max_connections minus the "
            "reserved ones) that the pools of every live process may open together "
            f"(pool_size + max_overflow). Above {config.fleet_budget_ratio:.0%} "
            "SQLAlchemyFleetBudgetOverServerLimit fires; above 100% the fleet can run the "
            "server out of connections.",
            "percentunit",
            f"max({_rules.share(budget)}{KNOWN})",
            steps=[("green", None), ("orange", config.fleet_budget_ratio), ("red", 1)],
            width=4,
            height=8,
        ),
        timeseries(
            "Budget vs server limit vs open",
            "Per database server: the connections every live process's pools may open "
            "(budget), those open now (checked out plus idle), and the server's available "
            "slots (limit, dashed). The budget crossing the limit is a deploy or scale-up "
            "away from 'too many clients'.",
            "short",
            targets(
                (f"{_rules.per_server(budget)}{KNOWN}", "{{server}} budget"),
                (f"{_rules.per_server(opened)}{KNOWN}", "{{server}} open"),
                (f"{_rules.AVAILABLE}{KNOWN}", "{{server}} server limit"),
            ),
            width=10,
            capacity=True,
        ),
        timeseries(
            "Budget and open connections by job",
            "Per job and server: the budget (pool_size + max_overflow of every live process) "
            "and the connections open now. A step up is a scale-up or bigger pools; a job "
            "with no server holds pools named by the app whose targets carry no server label.",
            "short",
            targets(
                (f"{_rules.per_job(budget)}{BY_JOB}", "{{job}} {{server}} budget"),
                (f"{_rules.per_job(opened)}{BY_JOB}", "{{job}} {{server}} open"),
            ),
            width=10,
        ),
    )
