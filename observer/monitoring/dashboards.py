"""The Grafana dashboards: pool overview (with the server view), sessions and leaks, routes."""

from __future__ import annotations

from observer.monitoring.config import MonitoringConfig
from observer.monitoring.panels import Json
from observer.monitoring.pools_dashboard import pools
from observer.monitoring.routes_dashboard import routes
from observer.monitoring.sessions_dashboard import sessions


def all_dashboards(config: MonitoringConfig) -> dict[str, Json]:
    """File stem -> dashboard."""
    return {
        "pool-observer-pools": pools(config),
        "pool-observer-sessions": sessions(config),
        "pool-observer-routes": routes(config),
    }
