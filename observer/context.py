"""The request scope: what the current request did to the pool, carried in a contextvar."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from observer.routing import route_template

NO_ROUTE = "none"
"""Route label of work done outside any HTTP request (scripts, background tasks)."""


@dataclass(slots=True, eq=False)
class RequestScope:
    """One request's attribution data; lives in :data:`current_request` for the request's life.

    The route template is resolved after the app ran (the router fills it in), so code that
    runs during the request keeps a reference to the scope and reads ``route`` later; while
    the request runs, :func:`route_of` resolves it from the ASGI scope the router updates.
    """

    route: str = NO_ROUTE
    method: str = ""
    request_id: str = ""
    checkouts: int = 0
    wait_seconds: float = 0.0
    hold_seconds: float = 0.0
    sessions_opened: int = 0
    sessions: list[Any] | None = None  # created on the first session: most requests have one
    """The :class:`~observer.sessions.OpenSession` records of the sessions the request opened."""
    finished: bool = False
    """Set once the request's totals went to the route counters; later holds go there directly."""
    out: int = 0
    """Connections the request holds now."""
    out_since: float = 0.0
    """Sum of the checkout times of the connections held now (their hold so far is
    ``out * now - out_since``)."""
    asgi: Any = None
    """The ASGI scope while the request runs (the router writes the matched route into it)."""
    root_path: str = ""
    """``root_path`` when the request reached the middleware (a proxy prefix, not a mount)."""
    span_context: Any = None
    """The OpenTelemetry span context current when the request first used the database, for
    log lines about it emitted later, outside the request's context (see ``remember_span``)."""
    span_noted: bool = False
    """``span_context`` was looked up (it may be ``None``: no span)."""
    started: float = 0.0
    """``perf_counter()`` when the request began."""
    status: int = 0
    """The response's HTTP status, once it started."""
    response_end: float = 0.0
    """``perf_counter()`` when the last body message went out (0 until then)."""
    error: str | None = None
    """Class name of the exception the app raised through the middleware (it is re-raised)."""

    def hold_now(self, now: float) -> float:
        """Connection time used so far: finished holds plus the ones still going on."""
        return self.hold_seconds + (self.out * now - self.out_since if self.out else 0.0)


current_request: ContextVar[RequestScope | None] = ContextVar("pool_observer_request", default=None)


def route_of(scope: RequestScope | None) -> str:
    """The route label for work attributed to ``scope`` (resolved live while it runs)."""
    if scope is None:
        return NO_ROUTE
    asgi = scope.asgi
    if scope.finished or asgi is None:
        return scope.route
    return route_template(asgi, scope.root_path)
