"""Recording rules: the heavy expressions (per-pool ratios, histogram quantiles) evaluated once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from observer.monitoring.config import MonitoringConfig
from observer.server._label import DEFAULT_PORT, FROM_POOL, LABEL, PORTLESS

GROUP = "pool-observer.rules"
POOL = "job, instance, pool"

# The fleet's connection budget (docs/production.md, "A fleet of processes"): what every live
# process can open, per job and per database server, next to what the server allows.
BUDGET = "sqlalchemy_pool_max_connections"
OPEN = "sqlalchemy_pool_open_connections"
AVAILABLE = "server:pg_settings_available_connections:min"


def per_job(what: str) -> str:
    """Name of the recorded per-(job, server) sum of ``BUDGET`` or ``OPEN``."""
    return f"job_server:{what}:sum"


def per_server(what: str) -> str:
    """Name of the recorded per-server sum of ``BUDGET`` or ``OPEN`` (every job)."""
    return f"server:{what}:sum"


def share(what: str) -> str:
    """Name of the recorded per-server ``BUDGET`` or ``OPEN`` / the server's available slots."""
    return f"server:{what}_per_available_connections:ratio"


def _string(text: str) -> str:
    """A PromQL string literal (Go's escapes: backslashes and quotes doubled)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def with_server(series: Callable[[str], str]) -> str:
    """``series(matcher)`` with a ``server`` label: the target's own when the scrape config sets
    one (a pool named by the app, a PgBouncer in between), else ``host:port`` read from the
    default pool label ``driver://host:port/database``, exactly as the sidecar labels the
    server (observer.server._label). A pool whose server is unknown keeps no server label."""
    unset, given = series(LABEL + '=""'), series(LABEL + '!=""')
    label, port = _string(LABEL), _string(f"$1:{DEFAULT_PORT}")
    return (
        "label_replace(\n"
        f'  label_replace({unset}, {label}, "$1", "pool", {_string(FROM_POOL)}),\n'
        f"  {label}, {port}, {label}, {_string(PORTLESS)}\n"
        f")\nor {given}"
    )


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


def once(metric: str, config: MonitoringConfig, matcher: str) -> str:
    """Each live process's pool gauge once. In multiprocess mode a worker's own series carries
    its pid (liveall) and nothing aggregates them; a scrape that also shows a pid-less copy of
    the same pool (an exposition that renders the process's own registry beside the workers'
    files) would count it twice, so an instance's pid series win over its pid-less ones."""
    sel, has_pid, no_pid = config.selector, 'pid!=""', 'pid=""'
    return (
        f"{metric}{sel(matcher, has_pid)}\n"
        f"  or ({metric}{sel(matcher, no_pid)}"
        f" unless on (job, instance, pool) {metric}{sel(has_pid)})"
    )


def fleet_rules(config: MonitoringConfig) -> list[dict[str, Any]]:
    """The fleet's connection budget and open connections per (job, server) and per server,
    the server's available slots, and their ratios (what the fleet alerts and panels read)."""

    def budget(matcher: str) -> str:
        # `> 0` leaves out unbounded pools (-1), which have no budget to add.
        return f"({once(BUDGET, config, matcher)}) > 0"

    def opened(matcher: str) -> str:
        out = once("sqlalchemy_pool_checked_out_connections", config, matcher)
        idle = once("sqlalchemy_pool_checked_in_connections", config, matcher)
        return f"(\n  {out}\n) + (\n  {idle}\n)"

    limit = "superuser_reserved_connections"
    rules = [
        {"record": per_job(what), "expr": f"sum by (job, {LABEL}) (\n{with_server(fn)}\n)"}
        for what, fn in ((BUDGET, budget), (OPEN, opened))
    ]
    rules += [
        {"record": per_server(what), "expr": f"sum by ({LABEL}) ({per_job(what)})"}
        for what in (BUDGET, OPEN)
    ]
    rules.append(
        {
            "record": AVAILABLE,
            # Several sidecars may watch one server: the smallest figure wins.
            "expr": (
                f"min by ({LABEL}) (\n"
                f"  pg_settings_max_connections{config.server()}\n"
                f"  - pg_settings_{limit}{config.server()}\n"
                # PostgreSQL 16's reserved_connections; postgres_exporter on an older server
                # has no such series: 0 then.
                f"  - (\n    pg_settings_reserved_connections{config.server()}\n"
                f"    or pg_settings_max_connections{config.server()} * 0\n  )\n"
                ")"
            ),
        }
    )
    rules += [
        {"record": share(what), "expr": f"{per_server(what)} / on ({LABEL}) {AVAILABLE}"}
        for what in (BUDGET, OPEN)
    ]
    return rules


def rule_groups(config: MonitoringConfig) -> dict[str, Any]:
    """The content of the recording-rules file."""
    rules = recording_rules(config) + fleet_rules(config)
    return {"groups": [{"name": GROUP, "rules": rules}]}
