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

ENDED: Any = object()
""":attr:`HttpRequest.request` of a request that ended without using the pool (or whose scope
could not be made): work it left running (a task it spawned) counts as outside any request."""


class HttpRequest:
    """What the middleware puts in :data:`current_http` for one HTTP request: its ASGI scope
    while it runs, and its :class:`RequestScope` once the request used the pool.

    Never the ASGI scope itself: code that copies the context keeps whatever the contextvar
    holds, and the server does so in the request's last ``send`` (uvicorn's keep-alive timer,
    ``loop.call_later``; cancelled at the connection's next request, a ``TimerHandle`` stays in
    the loop's heap with its context until its time). The scope, and all it references, then
    lived for seconds after its request: dozens of them under load, work for the garbage
    collector that cost several percent of the HTTP throughput (bench/README.md, "The HTTP
    gap"). This holder drops its reference to the scope when the request ends (:meth:`end`);
    what stays is a few slots.
    """

    __slots__ = ("asgi", "request", "root_path")

    def __init__(self, asgi: MutableMapping[str, Any]) -> None:
        self.asgi: MutableMapping[str, Any] | None = asgi
        self.request: RequestScope | None = None  # or ENDED
        self.root_path: str = asgi.get("root_path", "")
        """``root_path`` when the request reached the middleware (a proxy prefix; mounts change
        the scope's own later)."""

    def end(self) -> MutableMapping[str, Any] | None:
        """The request ended: forget its ASGI scope (returned, for the last look at it)."""
        asgi, self.asgi = self.asgi, None
        return asgi


current_http: ContextVar[HttpRequest | None] = ContextVar("pool_observer_http", default=None)
"""The HTTP request being served. Its :class:`RequestScope` is created when the request first
uses the pool (:func:`request_now`): a request that never does costs no scope, no id and no
Server-Timing header."""


def request_now(clock: Callable[[], float] = perf_counter) -> RequestScope | None:
    """The request the current code runs for, or ``None`` (no HTTP request)."""
    scope = current_request.get()
    if scope is not None:
        return scope
    http = current_http.get()
    if http is None:
        return None
    found = http.request
    if found is None:
        asgi = http.asgi
        if asgi is None:  # it ended (never used the pool while it ran)
            return None
        found = http.request = RequestScope(
            method=asgi.get("method", ""),
            request_id=request_id(asgi),
            asgi=asgi,
            root_path=http.root_path,
            started=clock(),
        )
    elif found is ENDED:
        return None
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
