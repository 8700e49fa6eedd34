"""Alert rules, recording rules and Grafana dashboards for pool-observer, built from one source.

``observer render`` writes them (``add_arguments`` and ``run`` are that command); what a user may
change is a :class:`observer.monitoring.config.MonitoringConfig`.
"""

from __future__ import annotations

from observer.monitoring._cli import add_arguments, run

__all__ = ["add_arguments", "run"]
