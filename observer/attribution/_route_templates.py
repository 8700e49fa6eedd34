"""The route template of a request, resolved defensively from what the router matched.

What the installed frameworks do (pinned by ``tests/test_routing.py``; FastAPI 0.165,
Starlette 1.10):

- The router writes the matched route into ``scope["route"]`` (Starlette's ``Route`` and
  FastAPI's ``APIRoute``); the scope is updated in place, so a middleware sees it after the
  app ran.
- FastAPI >= 0.137 no longer copies the routes of ``include_router(prefix=...)``: the
  original ``APIRoute`` (path without the prefixes) lands in ``scope["route"]`` and the
  prefixed template is in ``scope["fastapi"]["effective_route_context"].path_format``.
  Older FastAPI copies the routes with the prefix in ``path_format``: both give the same.
- A ``Mount`` adds the matched prefix to ``root_path`` (and keeps the server's ``root_path``
  in ``app_root_path``); routes of the mounted app carry only their own path.
"""

from __future__ import annotations

import re
from typing import Any

from observer._asgi_types import Scope

UNMATCHED = "unmatched"
"""Route label of a request no route matched (404s, scanners): one value, however many paths."""

_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


def route_template(scope: Scope, root_path: str = "") -> str:
    """The full template (``/api/v1/orders/{id}``) of the route that served ``scope``.

    ``root_path`` is the scope's ``root_path`` when the request reached the middleware (a
    prefix set by the server or a proxy, not part of the template). Anything unexpected gives
    :data:`UNMATCHED`, never an exception.
    """
    try:
        route: Any = scope.get("route")
        if route is None:
            return UNMATCHED
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
        mount = _mount_prefix(scope, root_path, path)
        return mount + path if mount else path
    except Exception:
        return UNMATCHED


def _mount_prefix(scope: Scope, root_path: str, path: str) -> str:
    """The part of ``root_path`` that mounts added, with mount parameters as ``{name}``."""
    current = scope.get("root_path")
    if not isinstance(current, str) or not current:
        return ""
    if current.startswith(root_path):
        prefix = current[len(root_path) :]
    else:
        app_root = scope.get("app_root_path")
        if not isinstance(app_root, str) or not current.startswith(app_root):
            return ""
        prefix = current[len(app_root) :]
    prefix = prefix.rstrip("/")
    if not prefix:
        return ""
    params = scope.get("path_params")
    if not params or not isinstance(params, dict):
        return prefix
    # A mount with parameters (Mount("/tenants/{tenant}")) matched concrete values: put the
    # names back, or every tenant would be a label value. Only parameters the route's own
    # template does not use can come from a mount.
    own = set(_PARAM.findall(path))
    values = {str(value): f"{{{name}}}" for name, value in params.items() if name not in own}
    if not values:
        return prefix
    return "/".join(values.get(segment, segment) for segment in prefix.split("/"))
