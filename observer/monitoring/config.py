"""Everything a user may override when rendering the rules and dashboards, validated up front."""

from __future__ import annotations

import dataclasses
import math
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from observer._values import valid_host

# ASCII digits: \d alone also matches other digits, which int() reads and Prometheus does not.
_DURATION = re.compile(r"(?:(\d+)(ms|s|m|h|d|w|y))+", re.ASCII)
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)", re.ASCII)
# One PromQL label matcher: name, operator, and a quoted string with Go's escapes only
# (promtool rejects "\d": a regex needs "\\d").
_ESCAPE = r"\\(?:[abfnrtv\\]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3})"
_MATCHER = (
    r"\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*"
    rf"(?:\"(?:[^\"\\\n]|{_ESCAPE}|\\\")*\"|'(?:[^'\\\n]|{_ESCAPE}|\\')*'|`[^`]*`)\s*"
)
# Empty (the server selector's "same as the job selector"), or matchers without a trailing
# comma: the selector is spliced into {<selector>, <more matchers>}.
_MATCHERS = re.compile(rf"(?:{_MATCHER}(?:,{_MATCHER})*)?", re.ASCII)
_UNIT_SECONDS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "y": 31536000,
}

DEFAULT_RUNBOOK_URL = "https://github.com/pool-observer/pool-observer/blob/main/docs/runbooks.md"


def check_selector(name: str, selector: str) -> None:
    """ValueError unless ``selector`` is PromQL label matchers separated by commas, without
    braces (``job="api", env!="dev"``): it is spliced into every query."""
    if "{" in selector or "}" in selector:
        raise ValueError(
            f"{name} takes label matchers without braces, like 'job=\"api\"' (got {selector!r})"
        )
    if _MATCHERS.fullmatch(selector) is None:
        raise ValueError(
            f"{name} must be PromQL label matchers separated by commas, like "
            f'\'job="api", env!="dev"\', each value quoted, backslashes doubled (got {selector!r})'
        )


SOURCE_URL_EXAMPLE = "https://github.com/org/repo/blob/main/{path}#L{line}"
# user:password@ in a URL's authority (an '@' in its path is none)
_USERINFO = re.compile(r"^([^:/?#]*://)[^/?#]*@")
# For messages: everything up to the last '@' (a password may hold an unescaped '/', '?' or
# '#', which ends the authority before its '@'; masking an '@' of a path too is harmless)
_UP_TO_LAST_AT = re.compile(r"^([^:/?#]*://).*@")


def _shown(url: str) -> str:
    """``url`` quoted for a message, whatever precedes its last ``@`` masked."""
    return repr(_UP_TO_LAST_AT.sub(r"\1***@", url))


def check_url(name: str, url: str, *, empty: bool = False, example: str = "") -> None:
    """ValueError unless ``url`` is an http(s) URL of printable ASCII without spaces, with a
    host name and no ``user:password@``: the rendered files are read by whoever sees them.
    Messages never repeat a password."""
    if empty and url == "":
        return
    if re.fullmatch(r"https?://[!-~]+", url, re.ASCII) is None:
        raise ValueError(
            f"{name} must be an http(s) URL without spaces, control or non-ASCII characters "
            f"(percent-encode them) (got {_shown(url)})" + ("; empty for none" if empty else "")
        )
    if _USERINFO.match(url):
        raise ValueError(
            f"{name} must not hold a user or password (got {_shown(url)}): the rendered files "
            "are read by whoever sees them; give the URL without user:password@"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        host, _ = parts.hostname, parts.port  # ValueError: an unclosed '[', a port not 0-65535
    except ValueError:
        host = None
    if not valid_host(host):
        raise ValueError(
            f"{name} must be an http(s) URL with a host name (and a port number, if any), such "
            f"as {example or 'https://docs.example.com/page'} (got {_shown(url)})"
        )


def check_source_url(name: str, url: str) -> None:
    """ValueError unless ``url`` is empty or an http(s) URL template with ``{path}`` (and
    maybe ``{line}``) and no other placeholder, quote, backslash or ``$``."""
    if url == "":
        return
    check_url(name, url, empty=True, example=SOURCE_URL_EXAMPLE)
    placeholders = re.findall(r"\{[^{}]*\}", url)
    if "{path}" not in placeholders:
        raise ValueError(
            f"{name} must contain {{path}}, where the leaking line's file goes (got "
            f"{_shown(url)}); e.g. {SOURCE_URL_EXAMPLE}"
        )
    rest = re.sub(r"\{(?:path|line)\}", "", url)
    if re.search(r'[{}"\\$`]', rest):
        raise ValueError(
            f"{name} may hold only the placeholders {{path}} and {{line}}, and no quote, "
            f"backslash or '$' (got {_shown(url)}); e.g. {SOURCE_URL_EXAMPLE}"
        )


def duration_seconds(value: str) -> float:
    """Seconds in a Prometheus duration such as ``1h30m``; ValueError when it is not one."""
    if not isinstance(value, str) or not _DURATION.fullmatch(value):
        raise ValueError(f"{value!r} is not a Prometheus duration (e.g. 30s, 5m, 1h30m)")
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))


@dataclass(frozen=True, kw_only=True)
class MonitoringConfig:
    """Selectors, thresholds, ``for:`` durations and links of the rendered rules and dashboards.

    Durations are Prometheus durations (``5m``); ``*_window`` is a range over which a counter's
    increase is taken, ``*_for`` how long a condition must hold before the alert fires.
    """

    # Label matchers (without braces) selecting the app's scrape jobs, spliced into every query.
    job_selector: str = 'job!=""'
    # Matchers selecting the sidecar's PostgreSQL server metrics; empty: same as job_selector.
    server_selector: str = ""
    # Alerts link to ``<runbook_url>#<alertname in lower case>``.
    runbook_url: str = DEFAULT_RUNBOOK_URL
    # Grafana base URL (https://grafana.example.com); when set, alerts get a dashboard_url.
    dashboard_url: str = ""
    # Where the "Leaking code lines" table links each line: a URL with {path} (the file, as the
    # origin names it: relative to the app's working directory) and maybe {line}; empty: none.
    source_url: str = ""
    # The scrape interval of the app's jobs: the metrics-absent alert waits at least two.
    scrape_interval: str = "15s"
    # Range of the recorded rates and quantiles (recording rules).
    rate_window: str = "5m"

    exhausted_for: str = "5m"
    saturation_ratio: float = 0.8
    saturation_for: str = "15m"
    timeouts_window: str = "5m"
    timeouts_for: str = "1m"
    slow_checkout_seconds: float = 0.5
    slow_checkout_for: str = "10m"
    long_hold_seconds: float = 5.0
    long_hold_for: str = "15m"
    leak_floor_increase: float = 10.0
    leak_floor_window: str = "30m"
    leak_floor_offset: str = "1h"
    leak_suspected_for: str = "30m"
    leaks_window: str = "10m"
    leaks_for: str = "1m"
    reclaimed_window: str = "10m"
    reclaimed_for: str = "1m"
    double_handouts_window: str = "10m"
    double_handouts_for: str = "1m"
    # Held now (read at scrape time, so they stay up while the harm lasts): a connection held
    # longer than HikariCP's leakDetectionThreshold would be, leaked sessions still open, and a
    # pool with connections out that hands none out (checkouts flat).
    held_too_long_seconds: float = 120.0
    held_too_long_for: str = "2m"
    leaked_open_for: str = "5m"
    pool_stuck_window: str = "10m"
    pool_stuck_for: str = "5m"
    # Held idle: a route whose connections sit idle (no statement running) for this share of
    # their hold, at least this many connections on average, while a pool is saturated.
    held_idle_ratio: float = 0.5
    held_idle_connections: float = 0.5
    held_idle_for: str = "10m"
    live_pools_threshold: float = 5.0
    pools_created_threshold: float = 10.0
    engine_per_request_window: str = "15m"
    engine_per_request_for: str = "10m"
    invalidations_threshold: float = 5.0
    invalidations_window: str = "10m"
    invalidations_for: str = "5m"
    hook_errors_window: str = "10m"
    hook_errors_for: str = "5m"
    absent_for: str = "5m"
    idle_in_transaction_seconds: float = 60.0
    idle_in_transaction_for: str = "5m"
    # Longer than a deploy takes: old and new code overlap with the database while it rolls.
    schema_drift_for: str = "15m"
    # A migration run that ended failed or timed out: the alert stays this long after it.
    migration_failed_window: str = "1h"
    migration_failed_for: str = "1m"
    # Longer than a migration should hold a deploy (a backfill belongs in a batch job).
    migration_running_for: str = "30m"
    # The fleet against its database server (docs/production.md): every live process's
    # pool_size + max_overflow summed per server, over the server's available slots
    # (max_connections minus the reserved ones), above this share for longer than a rolling
    # deploy overlaps old and new replicas; and connections actually open above this share.
    fleet_budget_ratio: float = 0.9
    fleet_budget_for: str = "15m"
    fleet_connections_ratio: float = 0.9
    fleet_connections_for: str = "5m"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith(("_for", "_window", "_offset", "_interval")):
                try:
                    duration_seconds(value)
                except ValueError as error:
                    raise ValueError(f"{field.name}: {error}") from None
            elif field.type == "float" and not (
                isinstance(value, int | float) and 0 < value < math.inf
            ):
                raise ValueError(f"{field.name} must be a finite number > 0 (got {value})")
            if field.name.endswith(("_window", "_offset", "_interval")) and not duration_seconds(
                value
            ):
                raise ValueError(f"{field.name} must be longer than 0s (got {value!r})")
        if not 0 < self.saturation_ratio < 1:
            raise ValueError(
                f"saturation_ratio must be between 0 and 1 (got {self.saturation_ratio}); "
                "a pool at 1 is exhausted, which SQLAlchemyPoolExhausted already reports"
            )
        if not self.job_selector.strip():
            raise ValueError("job_selector must not be empty; use 'job!=\"\"' to select every job")
        for name in ("job_selector", "server_selector"):
            check_selector(name, getattr(self, name))
        if duration_seconds(self.absent_for) < 2 * duration_seconds(self.scrape_interval):
            raise ValueError(
                f"absent_for ({self.absent_for}) must be at least two scrape intervals "
                f"(2 x {self.scrape_interval}), or the alert fires whenever Prometheus restarts"
            )
        check_url("runbook_url", self.runbook_url)
        check_url("dashboard_url", self.dashboard_url, empty=True)
        check_source_url("source_url", self.source_url)

    def selector(self, *matchers: str) -> str:
        """``{<job_selector>, <matchers>...}``: the selector of an app metric."""
        return "{" + ", ".join([self.job_selector, *matchers]) + "}"

    def server(self, *matchers: str) -> str:
        """``{<server_selector>, <matchers>...}``: the selector of a sidecar server metric."""
        return "{" + ", ".join([self.server_selector or self.job_selector, *matchers]) + "}"

    def runbook(self, alertname: str) -> str:
        """The runbook link of one alert (an anchor of docs/runbooks.md)."""
        return f"{self.runbook_url}#{alertname.lower()}"

    def replace(self, **changes: Any) -> MonitoringConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)
