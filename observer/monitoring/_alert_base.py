"""What every alert rule is made of: the rule, its dashboard link and the shared templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from observer.monitoring.config import MonitoringConfig

Severity = Literal["critical", "warning", "info"]

POOL_DASHBOARD = "pool-observer-pools"
SESSIONS_DASHBOARD = "pool-observer-sessions"


@dataclass(frozen=True)
class Alert:
    """One alerting rule; ``summary`` is static, ``description`` a Prometheus template."""

    name: str
    expr: str
    for_: str
    severity: Severity
    summary: str
    description: str
    dashboard: str
    # Labels from the sidecar's target: the dashboard link sets the server_* variables.
    server: bool = False
    # Per database server, over every job: the dashboard link sets no variable.
    per_server: bool = False

    def rule(self, config: MonitoringConfig) -> dict[str, Any]:
        """The rule as it goes into the rules file."""
        annotations = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": config.runbook(self.name),
        }
        if config.dashboard_url:
            prefix = "var-server_" if self.server else "var-"
            query = f"{prefix}job={{{{ $labels.job }}}}&{prefix}instance={{{{ $labels.instance }}}}"
            if "$labels.pool" in self.description:
                query += "&var-pool={{ $labels.pool }}"
            base = config.dashboard_url.rstrip("/")
            link = f"{base}/d/{self.dashboard}"
            annotations["dashboard_url"] = link if self.per_server else f"{link}?{query}"
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": annotations,
        }


def increase_over(metric: str, selector: str, window: str, by: str, threshold: float) -> str:
    # A labelled child appears on its first increment (value 1), and increase() takes a
    # series' first sample as its baseline: a series that did not exist `window` ago counts
    # with its whole value, an older one with its increase.
    return (
        f"sum by ({by}) (\n"
        f"  ({metric}{selector} unless {metric}{selector} offset {window})\n"
        f"  or (increase({metric}{selector}[{window}]) > 0)\n"
        f") > {threshold:g}"
    )


def where(pool: bool = True) -> str:
    where = "{{ $labels.job }} on {{ $labels.instance }}"
    return "Pool {{ $labels.pool }} of " + where if pool else where


COUNT = '{{ $value | printf "%.0f" }}'


LEAKS = "sqlalchemy_orm_session_leaks_total"
ORIGINS = "sqlalchemy_orm_session_leak_origins_total"
# The alert's own job and instance (and route), as matchers of a query built by the template's
# printf: Go's %q quotes as PromQL reads a string; %[n] reuses the n-th argument.
_TARGET = "job=%[1]q, instance=%[2]q"
_ROUTE = "%[3]q"
_ARGS = "$labels.job $labels.instance"


def _series(metric: str, matchers: str, window: str | None) -> str:
    """``metric{matchers}``, or with ``window`` its leaks in that window: a series that did
    not exist ``window`` ago counts with its whole value (see :func:`increase_over`)."""
    selector = f"{metric}{{{matchers}}}"
    if window is None:
        return selector
    return f"(({selector} unless {selector} offset {window}) or increase({selector}[{window}]))"


def _first(query: str, args: str, text: str, otherwise: str = "") -> str:
    """A Go template: ``text`` about the first sample of ``query`` (printf'ed with ``args``),
    ``otherwise`` when it returns none."""
    found = (
        f"{{{{ with printf `{query}` {args} | query }}}}{{{{ with first . }}}}{text}{{{{ end }}}}"
    )
    return found + (f"{{{{ else }}}}{otherwise}{{{{ end }}}}" if otherwise else "{{ end }}")


def top_origin_of_route(reasons: str | None, window: str | None) -> str:
    """A Go template naming the app line with the most leaks of the alert's route: among the
    lines that leaked (in ``window``, else ever) on the alert's job and instance with a reason
    the route leaked with (``reasons``: a regex narrowing both). The origin counter has no
    route label, so the pairing is by reason: exact while no other route of the instance leaks
    with the same reason, and the text says when one does (docs/dashboards.md)."""
    narrow = "" if reasons is None else f', reason=~"{reasons}"'
    route = _series(LEAKS, f"{_TARGET}, route={_ROUTE}{narrow}", window)
    others = _series(LEAKS, f"{_TARGET}, route!={_ROUTE}{narrow}", window)
    lines = _series(ORIGINS, _TARGET + narrow, window)
    args = _ARGS + " $labels.route"
    since = "" if window is None else f" in {window}"
    return _first(
        f"topk(1, sum by (origin) ({lines} and on (reason) ({route} > 0)) > 0)",
        args,
        ' Top leaking line: {{ .Labels.origin }} ({{ .Value | printf "%.0f" }} leaks'
        + since
        + ").",
        # No origin counter (an app on an older pool-observer): the log has the lines.
        " The session.leak log events name the line of each.",
    ) + _first(
        f"count(sum by (route) ({others} and on (reason) ({route} > 0)) > 0)",
        args,
        " {{ .Value }} other route(s) leaked with the same reason: the session.leak log pairs"
        " each line with its route.",
    )


def top_origin(reason: str, window: str) -> str:
    """A Go template naming the app line with the most leaks of ``reason`` in ``window`` on
    the alert's job and instance (nothing when there is none)."""
    lines = _series(ORIGINS, f'{_TARGET}, reason="{reason}"', window)
    return _first(
        f"topk(1, sum by (origin) ({lines}) > 0)",
        _ARGS,
        f" Top line of the {reason} leaks in the last {window}: {{{{ .Labels.origin }}}}"
        ' ({{ .Value | printf "%.0f" }}).',
    )
