"""The pure ASGI middleware: scopes each HTTP request so its pool use lands on its route."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter
from typing import Protocol

from observer._asgi_types import ASGIApp, Message, Receive, Scope, Send
from observer._hooks import Hooks
from observer._types import Snapshot
from observer.asgi._live_page import LivePage
from observer.asgi._requests import Requests
from observer.attribution._scope import ENDED, HttpRequest, RequestScope, current_http
from observer.settings import Settings


class RequestObserver(Protocol):
    """What the middleware needs from the observer (:class:`observer.Observer` is one)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def hooks(self) -> Hooks: ...

    @property
    def requests(self) -> Requests: ...

    def begin_request(self, scope: Scope) -> RequestScope:
        """The attribution scope of a new HTTP request."""
        ...

    def metrics_endpoint(self) -> ASGIApp:
        """The ASGI app serving the metrics (at the ``metrics_path`` option)."""
        ...

    def snapshot(self) -> Snapshot:
        """Pools and open sessions right now (for the live page)."""
        ...


class ObserverMiddleware:
    """Attributes pool and session use to the request's route; serves the metrics path.

    Pure ASGI (``BaseHTTPMiddleware`` breaks contextvars and cancels on disconnect); no
    per-request state on ``self``: it lives in the :class:`RequestScope` of a contextvar.
    Whatever goes wrong in here is counted in ``observer_hook_errors_total`` and never reaches
    the request: the app's own exceptions, status codes and cancellations pass through as
    they are.
    """

    def __init__(self, app: ASGIApp, *, observer: RequestObserver) -> None:
        self.app = app
        self.observer = observer
        self.metrics_path = observer.settings.metrics_path
        self.metrics = observer.metrics_endpoint()
        live_path = observer.settings.live_page_path
        self.live_page = (
            LivePage(
                observer.snapshot,
                live_path,
                token=observer.settings.metrics_token,  # what /metrics asks for, it asks for too
                failed=observer.hooks.reporter("live_page"),
            )
            if live_path
            else None
        )
        self.server_timing = observer.settings.server_timing
        # With request logs on, every request needs its scope from the start (status, duration,
        # id); otherwise it is created when the request first uses the pool (request_now).
        self.eager = observer.settings.log_requests

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
        observer = self.observer
        # The contextvar holds a small holder, never the scope: see HttpRequest.
        http = HttpRequest(scope)
        if self.eager:  # request logs need every request's scope (status, duration, id) at once
            try:
                http.request = observer.begin_request(scope)
            except Exception as exc:  # never fail the request because of us
                observer.hooks.failed("begin_request", exc)
                http.request = ENDED  # the request goes on unobserved
        # Otherwise the pool hooks create the request's scope on first use (request_now); a
        # request that never uses the pool only counts on its route when it ends.
        sender = _Sender(send, http, observer, self.server_timing)
        token = current_http.set(http)
        try:
            await self.app(scope, receive, sender)
        except BaseException as exc:  # recorded for the request's log line, then re-raised
            request = http.request
            if request is not None and request is not ENDED:
                request.error = type(exc).__name__
            raise
        finally:
            current_http.reset(token)
            observer.requests.end_http(http)


class _Sender:
    """The request's ``send``: notes the status and the response's end on the request's scope,
    and adds Server-Timing, if the scope exists by then (the request used the pool).

    One slotted object per request rather than a closure (a function, its closure tuple and a
    cell per variable): fewer objects for the garbage collector, whose full collections under
    load were the observer's main latency cost (bench/README.md)."""

    __slots__ = ("http", "observer", "send", "server_timing")

    def __init__(
        self, send: Send, http: HttpRequest, observer: RequestObserver, server_timing: bool
    ) -> None:
        self.send = send
        self.http = http
        self.observer = observer
        self.server_timing = server_timing

    async def __call__(self, message: Message, clock: Callable[[], float] = perf_counter) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            request = self.http.request
            if request is not None and request is not ENDED:
                request.status = message.get("status", 0)
                if self.server_timing:
                    message = _with_server_timing(message, request, self.observer)
            await self.send(message)
        elif kind == "http.response.body" and not message.get("more_body", False):
            # The server may schedule work that copies the context inside the last send
            # (uvicorn's keep-alive timer: it stays in the loop's heap for seconds, cancelled
            # or not): it gets a context without this request, so nothing of ours lives on.
            token = current_http.set(None)
            try:
                await self.send(message)
            finally:
                current_http.reset(token)
            request = self.http.request
            if request is not None and request is not ENDED:
                request.response_end = clock()
        else:
            await self.send(message)


def _with_server_timing(
    message: Message,
    request: RequestScope,
    observer: RequestObserver,
    clock: Callable[[], float] = perf_counter,
) -> Message:
    """``message`` (a response start) with the request's DB wait and hold so far, in ms."""
    try:
        wait = request.wait_seconds * 1000
        hold = request.hold_now(clock()) * 1000
        value = f"db-wait;dur={wait:.3f}, db-hold;dur={hold:.3f}"
        headers = list(message.get("headers", ()))
        headers.append((b"server-timing", value.encode("latin-1")))
        return {**message, "headers": headers}
    except Exception as exc:
        observer.hooks.failed("server_timing", exc)
        return message
