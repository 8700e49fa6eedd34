"""The route template of a finished request, resolved defensively from what the router matched."""

from __future__ import annotations

from typing import Any

from observer.asgi_types import Scope

UNMATCHED = "unmatched"
"""Route label of a request no route matched (404s, scanners): one value, however many paths."""


def route_template(scope: Scope) -> str:
    """The full template (``/api/v1/orders/{id}``) of the route that served ``scope``.

    Starlette's router puts the matched route in ``scope["route"]``; a mount adds its prefix to
    ``root_path`` for the sub-app, so the full template is the mount's part of ``root_path``
    plus the route's path. Anything unexpected gives :data:`UNMATCHED`, never an exception.
    """
    try:
        route: Any = scope.get("route")
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
        if not isinstance(path, str) or not path:
            return UNMATCHED
        root_path = scope.get("root_path") or ""
        app_root = scope.get("app_root_path", "")
        if isinstance(root_path, str) and root_path:
            mount_prefix = root_path[len(app_root) :] if root_path.startswith(app_root) else ""
            if mount_prefix and not path.startswith(mount_prefix):
                path = mount_prefix.rstrip("/") + path
        return path
    except Exception:
        return UNMATCHED
