"""Alert rules, recording rules and Grafana dashboards for pool-observer, built from one source."""

from __future__ import annotations
