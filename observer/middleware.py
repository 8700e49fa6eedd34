"""The pure ASGI middleware: scopes each HTTP request so its pool use lands on its route."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from observer.asgi_types import ASGIApp, Receive, Scope, Send
from observer.context import RequestScope, current_request
from observer.live_page import LivePage
from observer.routing import route_template

if TYPE_CHECKING:
    from observer.core import Observer


class ObserverMiddleware:
    """Attributes pool and session use to the request's route; serves the metrics path.

    Pure ASGI (``BaseHTTPMiddleware`` breaks contextvars and cancels on disconnect); no
    per-request state on ``self``: it lives in the :class:`RequestScope` of a contextvar.
    """

    def __init__(self, app: ASGIApp, *, observer: Observer) -> None:
        self.app = app
        self.observer = observer
        self.metrics_path = observer.settings.metrics_path
        self.metrics = observer.metrics_endpoint()
        live_path = observer.settings.live_page_path
        self.live_page = LivePage(observer, live_path) if live_path else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.metrics_path is not None and scope.get("path") == self.metrics_path:
            await self.metrics(scope, receive, send)
            return
        if self.live_page is not None and self.live_page.handles(scope.get("path", "")):
            await self.live_page(scope, receive, send)
            return
        request = RequestScope(method=scope.get("method", ""), request_id=_request_id(scope))
        token = current_request.set(request)
        try:
            await self.app(scope, receive, send)
        finally:
            current_request.reset(token)
            request.route = route_template(scope)
            self.observer.end_request(request)


def _request_id(scope: Scope) -> str:
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            text: str = value.decode("latin-1")[:128]
            if text.isprintable():
                return text
    return uuid.uuid4().hex
