"""The one place observer re-derives what an older Starlette router leaves out of the scope."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

Scope = Mapping[str, Any]  # an ASGI scope, only read here
_MAX_DEPTH = 32  # a mount at "/" consumes nothing: the walk needs a bound of its own


def routed_route(scope: Scope, root_path: str = "") -> Any | None:
    """The route a Starlette router sent ``scope`` to, when the router did not record it.

    Newer Starlette routers record the route they took in ``scope["route"]`` (the ``Mount``
    when a request ends in one: a 404 inside a mounted router); older ones do not (read:
    ``starlette/routing.py`` of 0.37.2, the floor, where only FastAPI's ``APIRoute`` puts itself
    there; run: 0.37.2 and 1.10.0 in tests/compat/test_starlette_seam.py), so a plain Starlette
    route left the request without a route. Every release records what the route matched in
    ``scope["endpoint"]``. This re-runs the router's choice on the request's path from the
    first router it met (``scope["router"]``): the first route that matches in full, else the
    first partial match (a wrong method), into the routes of each mount. It returns the route
    only when that route's match gives the request's own endpoint, ``None`` otherwise (and
    never raises: the caller then labels the request ``unmatched``).

    ``root_path`` is the scope's ``root_path`` when the request reached the middleware. Cost:
    one ``matches()`` per route tried, paid only by a request with an ``endpoint`` and no
    ``route``, which the newer releases never leave.
    """
    try:
        routing = sys.modules.get("starlette.routing")
        router, path, endpoint = scope.get("router"), scope.get("path"), scope.get("endpoint")
        if routing is None or router is None or endpoint is None or not isinstance(path, str):
            return None
        probe: dict[str, Any] = {
            "type": scope.get("type", "http"),
            "path": path,
            "root_path": root_path,
            "method": scope.get("method", "GET"),
            "headers": scope.get("headers", ()),
        }
        routes: Iterable[Any] = getattr(router, "routes", ())
        taken: tuple[Any, Scope] | None = None
        for _ in range(_MAX_DEPTH):
            step = _choice(routes, probe, routing)
            if step is None:
                break
            taken = step
            route, child = step
            if not isinstance(route, routing.Mount | routing.Host):
                break
            probe.update(child)
            routes = getattr(route, "routes", None) or ()
        else:
            return None
        if taken is None or taken[1].get("endpoint") is not endpoint:
            return None
        return taken[0]
    except Exception:
        return None


def _choice(routes: Iterable[Any], probe: Scope, routing: Any) -> tuple[Any, Scope] | None:
    """What ``Router.app`` picks: the first full match, else the first partial one."""
    partial: tuple[Any, Scope] | None = None
    for route in routes:
        match, child = route.matches(probe)
        if match is routing.Match.FULL:
            return route, child
        if match is routing.Match.PARTIAL and partial is None:
            partial = route, child
    return partial
