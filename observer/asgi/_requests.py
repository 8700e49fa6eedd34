"""One HTTP request's life: its scope at the start; route, totals, leaks and logs at the end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from time import perf_counter
from typing import NamedTuple

from observer._asgi_types import Scope
from observer._hooks import Hooks
from observer._logs import emit
from observer.attribution._request_ids import request_id
from observer.attribution._route_metrics import RouteMetrics
from observer.attribution._route_templates import UNMATCHED, route_template
from observer.attribution._scope import ENDED, HttpRequest, RequestScope
from observer.sessions._tracker import SessionTracker
from observer.settings import Settings


class _Opened(NamedTuple):
    """Where a session left open at the request's end was opened, without the session's
    record (which points back at the request)."""

    origin: object


class Requests:
    """What the middleware calls at the start and at the end of each HTTP request."""

    def __init__(
        self, settings: Settings, routes: RouteMetrics, sessions: SessionTracker, hooks: Hooks
    ) -> None:
        self._routes = routes
        self._sessions = sessions
        self._hooks = hooks
        self._grace = settings.request_end_grace_seconds
        self._log = settings.log_requests
        self._span_attributes = settings.tracing
        self._check = hooks.guard("request_end", sessions.check_request_end)
        self.serving = False
        """A request has finished: the app is past its startup."""

    def begin(self, scope: Scope, clock: Callable[[], float] = perf_counter) -> RequestScope:
        """The attribution scope of a new request. Its id comes from ``X-Request-ID``
        (printable, at most 128 characters) or is generated."""
        return RequestScope(
            method=scope.get("method", ""),
            request_id=request_id(scope),
            asgi=scope,
            root_path=scope.get("root_path", ""),
            started=clock(),
        )

    def end(self, request: RequestScope, clock: Callable[[], float] = perf_counter) -> None:
        """The app returned: resolve the route template, add the totals to the route, check
        the sessions left open, and log the request (opt-in). Never raises."""
        now = clock()
        asgi, request.asgi = request.asgi, None  # whatever happens below
        try:
            request.route = UNMATCHED if asgi is None else route_template(asgi, request.root_path)
            hold = request.hold_now(now)
            self._routes.finish(request)
            self.serving = True
            if request.sessions:
                self._check_sessions(request, now)
            if self._span_attributes:
                _set_span_attributes(request, hold)
            if self._log:
                emit(
                    "info",
                    "request.end",
                    request,
                    route=self._routes.label(request.route),
                    method=request.method,
                    status=request.status or None,
                    error=request.error,
                    duration_ms=round((now - request.started) * 1000, 3),
                    db_wait_ms=round(request.wait_seconds * 1000, 3),
                    db_hold_ms=round(hold * 1000, 3),
                    checkouts=request.checkouts,
                    sessions_opened=request.sessions_opened,
                )
        except Exception as exc:
            self._hooks.failed("end_request", exc)

    def end_http(self, http: HttpRequest) -> None:
        """The app returned, for a request whose scope was created on first use (if at all):
        one that used the pool ends like any; one that did not only counts on its route.
        Either way ``http`` forgets the ASGI scope (code that keeps the request's context,
        such as a server's keep-alive timer, must not keep the scope alive)."""
        asgi = http.end()
        try:
            request = http.request
            if request is ENDED:  # never observed (starting its scope failed)
                return
            if request is not None:
                # end() drops the scope's reference to the ASGI scope; the finished scope
                # stays, so work the request left running (a task) still counts on its route
                self.end(request)
                return
            http.request = ENDED
            if asgi is not None:
                self._routes.count_request(route_template(asgi, http.root_path))
            self.serving = True
        except Exception as exc:
            self._hooks.failed("end_request", exc)

    def _check_sessions(self, request: RequestScope, now: float) -> None:
        records = [record for record in request.sessions or () if not record.closed]
        # The records point back at the request: break the cycle, but keep where the open ones
        # were opened, for the connections they still hold (snapshot(), the live page).
        request.sessions = [_Opened(record.origin) for record in records] or None
        if not records:
            return  # the common case: every session was closed before the app returned
        # FastAPI >= 0.118 closes yield dependencies after the response is sent, but before the
        # app call returns (bench/grace_period.py); the grace covers closes that happen later.
        delay = (request.response_end or now) + self._grace - now
        if delay <= 0:
            self._sessions.check_request_end(records)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (not an ASGI server): check now
            self._sessions.check_request_end(records)
            return
        # A timer on the loop, not the sweeper thread: it fires on time (the sweeper ticks once
        # a second), and runs in the thread that runs the async sessions' events.
        loop.call_later(delay, self._check, records)


def _set_span_attributes(request: RequestScope, hold: float) -> None:
    """The request's pool use as attributes of the current span (the server span of the
    OpenTelemetry ASGI middleware or FastAPI's own, when one wraps this middleware)."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if request.checkouts and span.is_recording():
        span.set_attributes(
            {
                "pool_observer.checkouts": request.checkouts,
                "pool_observer.wait_seconds": request.wait_seconds,
                "pool_observer.hold_seconds": hold,
                "pool_observer.sessions_opened": request.sessions_opened,
            }
        )
