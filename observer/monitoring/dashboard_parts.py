"""What the dashboards share: their variables, links and quantile queries."""

from __future__ import annotations

from observer.monitoring.config import MonitoringConfig
from observer.monitoring.panels import Json, datasource_variable, m, query_variable, targets

RATE = "[$__rate_interval]"
BY_POOL = "instance, pool"


def variables(config: MonitoringConfig, *, pool: bool) -> list[Json]:
    sel = config.job_selector
    variables = [
        datasource_variable(),
        query_variable("job", "Job", f"label_values(sqlalchemy_pools{{{sel}}}, job)"),
        query_variable(
            "instance",
            "Instance",
            f'label_values(sqlalchemy_pools{{{sel}, job=~"$job"}}, instance)',
        ),
    ]
    if pool:
        variables.append(
            query_variable(
                "pool",
                "Pool",
                f"label_values(sqlalchemy_pool_max_connections{{{sel}, "
                'job=~"$job", instance=~"$instance"}, pool)',
            )
        )
    return variables


def links(config: MonitoringConfig) -> list[Json]:
    common = {"icon": "external link", "tooltip": "", "tags": [], "asDropdown": False}
    return [
        {
            **common,
            "icon": "doc",
            "includeVars": False,
            "keepTime": False,
            "targetBlank": True,
            "title": "Runbooks",
            "type": "link",
            "url": config.runbook_url,
        },
        {
            **common,
            "asDropdown": True,
            "includeVars": True,
            "keepTime": True,
            "tags": ["pool-observer"],
            "targetBlank": False,
            "title": "pool-observer dashboards",
            "type": "dashboards",
            "url": "",
        },
    ]


def quantiles(metric: str, by: str, *, pool: bool = True) -> list[Json]:
    legend = "{{instance}} {{pool}}" if pool else "{{instance}}"
    return targets(
        *(
            (
                f"histogram_quantile({q}, sum by ({by}, le) "
                f"(rate({m(metric + '_bucket', pool=pool)}{RATE})))",
                f"{legend} p{int(q * 100)}",
            )
            for q in (0.5, 0.99)
        )
    )
