"""What the dashboards share: their variables, links, alert list and quantile queries."""

from __future__ import annotations

from observer.monitoring._panels import (
    Json,
    Layout,
    alert_list,
    dashboard,
    datasource_variable,
    m,
    query_variable,
    targets,
)
from observer.monitoring.config import MonitoringConfig

RATE = "[$__rate_interval]"
BY_POOL = "instance, pool"


def new_layout() -> Layout:
    """A layout that starts with the list of pool-observer's pending and firing alerts."""
    layout = Layout()
    layout.add(
        alert_list(
            "Firing and pending alerts",
            "pool-observer's SQLAlchemy* alerts pending or firing now; each links to its runbook.",
            height=5,
        )
    )
    return layout


def board(
    config: MonitoringConfig,
    uid: str,
    title: str,
    description: str,
    layout: Layout,
    *,
    pool: bool = False,
    server: bool = False,
    annotations: tuple[Json, ...] = (),
) -> Json:
    """A pool-observer dashboard: ``layout``'s panels, the variables, the links and
    ``annotations`` (beside Grafana's built-in one)."""
    return dashboard(
        uid,
        title,
        description,
        variables(config, pool=pool, server=server),
        layout,
        links(config),
        annotations,
    )


def variables(config: MonitoringConfig, *, pool: bool, server: bool = False) -> list[Json]:
    """datasource, job, instance; pool (``pool``); server_job and server_instance (``server``).

    The server variables select the sidecar's PostgreSQL server view apart from the app's
    targets: the sidecar is the app's own scrape target (one job for both) or a job of its own.
    """
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
    if server:
        server_sel = config.server_selector or config.job_selector
        variables += [
            query_variable(
                "server_job",
                "Server job",
                f"label_values(pg_up{{{server_sel}}}, job)",
                "Scrape job of the observer sidecar that polls PostgreSQL: the app's job when "
                "the sidecar serves the app's metrics too, its own job when it is scraped apart.",
            ),
            query_variable(
                "server_instance",
                "Server instance",
                f'label_values(pg_up{{{server_sel}, job=~"$server_job"}}, instance)',
                "Scrape target of the observer sidecar (the server view of the database it polls).",
            ),
        ]
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
