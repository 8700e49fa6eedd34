"""The request scope: what the current request did to the pool, carried in a contextvar."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from observer.attribution._request_ids import request_id
from observer.attribution._route_templates import route_template

NO_ROUTE = "none"
"""Route label of work done outside any HTTP request (scripts, background tasks)."""


@dataclass(slots=True, eq=False)
class RequestScope:
    """One request's attribution data, found with :func:`request_now` during the request.

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
    idle_seconds: float = 0.0
    """Of ``hold_seconds``: time its connections were held with no statement running."""
    sessions_opened: int = 0
    sessions: list[Any] | None = None  # created on the first session: most requests have one
    """The ``OpenSession`` records (observer/sessions) of the sessions the request opened."""
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
"""A :class:`RequestScope` set directly by code that runs outside the middleware (tests,
benchmarks); it wins over :data:`current_http`. Read it with :func:`request_now`."""

current_http: ContextVar[MutableMapping[str, Any] | None] = ContextVar(
    "pool_observer_http", default=None
)
"""The ASGI scope of the HTTP request being served. Its :class:`RequestScope` is created when
the request first uses the pool (:func:`request_now`): a request that never does costs no
scope, no id and no Server-Timing header."""

REQUEST = "pool_observer.request"
"""Key of the request's :class:`RequestScope` in its ASGI scope, once created."""
ENDED: Any = object()
"""The value at :data:`REQUEST` once a request that never used the pool has ended: work it
left running (a task it spawned) counts as outside any request."""
ROOT_PATH = "pool_observer.root_path"
"""Key of the ASGI scope's ``root_path`` as the middleware saw it (mounts change it later)."""


def request_now(clock: Callable[[], float] = perf_counter) -> RequestScope | None:
    """The request the current code runs for, or ``None`` (no HTTP request)."""
    scope = current_request.get()
    if scope is not None:
        return scope
    http = current_http.get()
    if http is None:
        return None
    found: RequestScope | None = http.get(REQUEST)
    if found is ENDED:
        return None
    if found is None:
        found = http[REQUEST] = RequestScope(
            method=http.get("method", ""),
            request_id=request_id(http),
            asgi=http,
            root_path=http.get(ROOT_PATH, ""),
            started=clock(),
        )
    return found


def in_request() -> bool:
    """Whether the current code runs for an HTTP request (without creating its scope)."""
    return current_request.get() is not None or current_http.get() is not None


def route_of(scope: RequestScope | None) -> str:
    """The route label for work attributed to ``scope`` (resolved live while it runs)."""
    if scope is None:
        return NO_ROUTE
    asgi = scope.asgi
    if scope.finished or asgi is None:
        return scope.route
    return route_template(asgi, scope.root_path)
