"""The request scope: what the current request did to the pool, carried in a contextvar."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

NO_ROUTE = "none"
"""Route label of work done outside any HTTP request (scripts, background tasks)."""


@dataclass(slots=True, eq=False)
class RequestScope:
    """One request's attribution data; lives in :data:`current_request` for the request's life.

    The route template is resolved after the app ran (the router fills it in), so code that
    runs during the request keeps a reference to the scope and reads ``route`` later.
    """

    route: str = NO_ROUTE
    method: str = ""
    request_id: str = ""
    checkouts: int = 0
    wait_seconds: float = 0.0
    hold_seconds: float = 0.0
    sessions_opened: int = 0
    session_keys: list[int] = field(default_factory=list)
    finished: bool = False
    """Set once the request's totals went to the route counters; later holds go there directly."""


current_request: ContextVar[RequestScope | None] = ContextVar("pool_observer_request", default=None)


def route_of(scope: RequestScope | None) -> str:
    """The route label for work attributed to ``scope``."""
    return NO_ROUTE if scope is None else scope.route
