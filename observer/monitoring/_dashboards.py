"""The Grafana dashboards: pool overview (with the server view), sessions and leaks, routes."""

from __future__ import annotations

from observer.monitoring._panels import Json
from observer.monitoring._pools_dashboard import pools
from observer.monitoring._routes_dashboard import routes
from observer.monitoring._sessions_dashboard import sessions
from observer.monitoring.config import MonitoringConfig


def all_dashboards(config: MonitoringConfig) -> dict[str, Json]:
    """File stem -> dashboard."""
    return {
        "pool-observer-pools": pools(config),
        "pool-observer-sessions": sessions(config),
        "pool-observer-routes": routes(config),
    }
