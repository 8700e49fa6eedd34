"""``observer sidecar``: serve a multi-worker app's metrics plus PostgreSQL's view of it.

``GET /metrics`` aggregates the workers' files in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh registry
per scrape, so nothing is counted twice) and adds the server view polled from
``pg_stat_activity``; ``GET /healthz`` answers 200 while the sidecar works (the database being
down is reported by ``pg_up 0``, not by the health check).
"""

from __future__ import annotations

from observer.sidecar._cli import add_arguments, check_health, run
from observer.sidecar._config import SidecarConfig
from observer.sidecar._http import Sidecar

__all__ = ["Sidecar", "SidecarConfig", "add_arguments", "check_health", "run"]
