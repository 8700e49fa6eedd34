"""The route template of a request, resolved defensively from what the router matched.

What the installed frameworks do (pinned by ``tests/test_routing.py``; FastAPI 0.165,
Starlette 1.10):

- The router writes the matched route into ``scope["route"]`` (Starlette's ``Route`` and
  FastAPI's ``APIRoute``); the scope is updated in place, so a middleware sees it after the
  app ran. Older Starlette routers (0.37, the floor) leave only ``scope["endpoint"]``: the
  route is then re-derived from it (observer/_compat/starlette.py).
- FastAPI >= 0.137 no longer copies the routes of ``include_router(prefix=...)``: the
  original ``APIRoute`` (path without the prefixes) lands in ``scope["route"]`` and the
  prefixed template is in ``scope["fastapi"]["effective_route_context"].path_format``.
  Older FastAPI copies the routes with the prefix in ``path_format``: both give the same.
- A ``Mount`` adds the matched prefix to ``root_path`` (and keeps the server's ``root_path``
  in ``app_root_path``); routes of the mounted app carry only their own path. The first router
  the request met is in ``scope["router"]``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from observer._asgi_types import Scope
from observer._compat.starlette import routed_route

UNMATCHED = "unmatched"
"""Route label of a request no route matched (404s, scanners): one value, however many paths."""

_CONVERTOR = re.compile(r"{([^}:]+):[^}]*}")
_MAX_MOUNT_DEPTH = 32  # a mount at "/" consumes nothing: the walk needs a bound of its own


def route_template(scope: Scope, root_path: str = "") -> str:
    """The full template (``/api/v1/orders/{id}``) of the route that served ``scope``.

    ``root_path`` is the scope's ``root_path`` when the request reached the middleware (a
    prefix set by the server or a proxy, not part of the template). Only templates written in
    the app's code make up the result, never a segment of the requested path: a mount prefix
    that cannot be mapped back to the mounts' templates gives :data:`UNMATCHED`, and so does
    anything unexpected (never an exception).
    """
    try:
        route: Any = scope.get("route")
        if route is None:  # an older Starlette router did not record it: re-derive it
            route = routed_route(scope, root_path)
            if route is None:
                return UNMATCHED
        mount: str | None = ""
        current = scope.get("root_path")
        if current != root_path and isinstance(current, str):  # mounts grew it: walk them
            mount = _mount_template(scope, current, root_path)
            if mount is None:
                return UNMATCHED
            routing = sys.modules.get("starlette.routing")
            if routing is not None and isinstance(route, routing.Mount):
                # The request ended in a mount: an app without routes (static files, a WSGI
                # app), or a 404 inside a mounted router; the walk included that mount.
                return mount + "/{path}"
        path: Any = None
        fastapi_scope = scope.get("fastapi")
        if isinstance(fastapi_scope, dict):
            context = fastapi_scope.get("effective_route_context")
            if context is not None and getattr(context, "original_route", None) is route:
                path = getattr(context, "path_format", None)
        if not isinstance(path, str) or not path:
            path = getattr(route, "path_format", None) or getattr(route, "path", None)
        if not isinstance(path, str) or not path:
            return UNMATCHED
        return mount + path if mount else path
    except Exception:
        return UNMATCHED


def _template(path: str) -> str:
    """A route path as a label: ``/t/{tenant:int}`` -> ``/t/{tenant}`` (as ``path_format``)."""
    return _CONVERTOR.sub(r"{\1}", path)


def _mount_template(scope: Scope, current: str, root_path: str) -> str | None:
    """The templates of the mounts the request went through (``/t/{tenant}``), ``None`` when
    the mounts' prefix cannot be mapped to templates.

    Mounts grew ``root_path`` from ``root_path`` (at the middleware) to ``current``; the walk
    re-matches the path against the app's own ``Mount`` routes, level by level, with their
    convertors (``{tenant:int}`` matches ``0007``), until it accounts for that exact prefix.
    It runs only for requests that went through a mount, and matches only mounts."""
    routing = sys.modules.get("starlette.routing")
    router = scope.get("router")
    path = scope.get("path")
    if routing is None or router is None or not isinstance(path, str):
        return None
    probe: dict[str, Any] = {
        "type": scope.get("type", "http"),
        "path": path,
        "root_path": root_path,
        "method": scope.get("method", "GET"),
        "headers": scope.get("headers", ()),
    }
    parts: list[str] = []
    routes: Iterable[Any] = getattr(router, "routes", ())
    for _ in range(_MAX_MOUNT_DEPTH):
        if probe["root_path"] == current:
            return "".join(parts)
        taken = _first_full_match(_mounts(routes, routing), probe, routing)
        if taken is None:
            return None
        route, is_mount, child = taken
        if is_mount:  # a Host adds nothing to the path
            parts.append(_template(route.path))
            probe["root_path"] = child.get("root_path", probe["root_path"])
        routes = getattr(route, "routes", ())
    return None


def _first_full_match(
    candidates: Iterable[tuple[Any, bool]], probe: Scope, routing: Any
) -> tuple[Any, bool, Scope] | None:
    for route, is_mount in candidates:
        match, child = route.matches(probe)
        if match is routing.Match.FULL:
            return route, is_mount, child
    return None


def _mounts(routes: Iterable[Any], routing: Any) -> Iterator[tuple[Any, bool]]:
    """``(route, is_mount)`` for the ``Mount`` and ``Host`` routes in ``routes``, in order.

    A router picks the first route that matches in full; when the request went on through a
    mount, no route before it matched in full, so the first mount that matches is the one the
    router took. FastAPI >= 0.137 keeps ``include_router()`` routers as one route: their mounts
    are read with their prefixes through ``fastapi.routing.iter_route_contexts``."""
    mount, host = routing.Mount, routing.Host
    for route in routes:
        if isinstance(route, mount):
            yield route, True
        elif isinstance(route, host):
            yield route, False
        elif type(route).__name__ == "_IncludedRouter":
            fastapi_routing = sys.modules.get("fastapi.routing")
            contexts = getattr(fastapi_routing, "iter_route_contexts", None)
            if contexts is None:
                continue
            for context in contexts([route]):
                # a context stands for its route with the include prefixes (path, matches)
                original = context.original_route
                if isinstance(original, mount):
                    yield context, True
                elif isinstance(original, host):
                    yield context, False
