"""The metrics on a port of their own: a small threaded HTTP server (option ``metrics_port``).

Scrapes then never touch the app's event loop nor its public port; it binds ``127.0.0.1`` unless
told otherwise, asks for the bearer token when one is configured, and is bounded: a connection
has ``REQUEST_TIMEOUT`` seconds to send its request, at most ``MAX_HANDLERS`` are served at once
(one thread each; others get a 503), and the port is never shared with another process unless
the operator opted in.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from prometheus_client import CollectorRegistry

from observer._sweeper import observer_thread
from observer.metrics._exposition import (
    CHALLENGE,
    RENDER_FAILED_BODY,
    UNAUTHORIZED_BODY,
    authorized,
    render,
)
from observer.settings import ConfigurationError

PATHS = ("/metrics", "/")
REQUEST_TIMEOUT = 5.0
"""Seconds a connection has to send its whole request (and for each write of the response): a
client that sends half a request and idles, or drips it byte by byte, is dropped after that
(Prometheus sends its whole request at once)."""
MAX_HANDLERS = 16
"""Connections served at once, one thread each; a connection beyond them gets a 503 from the
accept loop itself, without a thread."""
BUSY_RESPONSE = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 20\r\n"
    b"Retry-After: 1\r\n\r\nmetrics server busy\n"
)


class MetricsServer:
    """Serves ``GET /metrics`` for ``registry`` on ``host:port`` until :meth:`close`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str,
        port: int,
        token: str | None,
        share_port: bool = False,
        request_timeout: float = REQUEST_TIMEOUT,
        max_handlers: int = MAX_HANDLERS,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        """``share_port`` (option ``metrics_port_shared``): the workers of one multi-process
        server all bind the port (``SO_REUSEPORT``, same user only); the kernel spreads scrapes
        over them, and each serves every worker's metrics. Without it, a port another process
        listens on is a :class:`ConfigurationError`. ``on_error`` counts a scrape that failed."""
        handler = _handler(registry, token, request_timeout, on_error)
        try:
            self._server = _BoundedServer(
                (host, port),
                handler,
                share_port=share_port,
                max_handlers=max_handlers,
                request_timeout=request_timeout,
            )
        except OSError as exc:
            raise ConfigurationError(
                f"metrics_port {port} on {host} cannot be used ({exc.strerror or exc}); choose a "
                "free port, 0 for any, or None to serve the metrics only on metrics_path (the "
                "workers of one server share a port only if each sets metrics_port_shared=True)"
            ) from None
        self._wake, self._waker = socket.socketpair()  # close() writes to _waker
        self._thread = threading.Thread(
            target=self._serve, name="pool-observer-metrics", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        # Blocks in select() until a scrape, close() or the next request deadline: idle, it
        # wakes for nothing (serve_forever() polls every 0.5 s, and its allocations could set off
        # a garbage collection on this thread: _sweeper.py).
        server, wake = self._server, self._wake
        readable: tuple[Any, ...] = (server, wake)
        with observer_thread():
            while True:
                ready = select.select(readable, (), (), server.next_deadline())[0]
                if wake in ready:
                    return
                if server in ready:
                    server.handle_request()
                server.service_actions()

    @property
    def port(self) -> int:
        """The port listened on (the one picked when ``metrics_port=0``)."""
        port: int = self._server.server_address[1]
        return port

    def close(self) -> None:
        """Stop serving and release the port. Idempotent."""
        if self._thread.is_alive():
            self._waker.send(b"x")
            self._thread.join(timeout=5)
        self._server.server_close()
        self._wake.close()
        self._waker.close()


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_handlers`` of them at once; a connection that has
    not sent its whole request ``request_timeout`` seconds after it was accepted is shut down."""

    daemon_threads = True
    block_on_close = False  # close() never waits for a client; each thread ends by its timeout
    request_queue_size = 64  # the listen backlog: a burst of scrapes waits there, not in threads

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        share_port: bool,
        max_handlers: int,
        request_timeout: float,
    ) -> None:
        # SO_REUSEPORT only on request: it lets any process of the same user bind the port too.
        self.allow_reuse_port = share_port
        self._slots = threading.BoundedSemaphore(max_handlers)
        self._timeout = request_timeout
        self._lock = threading.Lock()
        self._reading: dict[socket.socket, float] = {}  # connection -> deadline of its request
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse(request)  # in the accept loop: never a thread beyond max_handlers
            self.shutdown_request(request)
            return
        with self._lock:
            self._reading[request] = time.monotonic() + self._timeout
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.request_read(request)
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # closes the connection
        finally:
            self._slots.release()

    def request_read(self, request: socket.socket) -> None:
        """``request`` sent its whole request (or is done): its deadline no longer applies."""
        with self._lock:
            self._reading.pop(request, None)

    def shutdown_request(self, request: Any) -> None:
        self.request_read(request)  # first: the sweep below never touches a closed socket
        super().shutdown_request(request)

    def next_deadline(self) -> float | None:
        """Seconds until the first request deadline, or None (block) when no request is being
        read; allocates nothing when idle."""
        with self._lock:
            if not self._reading:
                return None
            return max(0.0, min(self._reading.values()) - time.monotonic())

    def service_actions(self) -> None:
        # After every wake of the serve loop: the socket timeout bounds each read, this bounds
        # the whole request (a client dripping a byte at a time).
        now = time.monotonic()
        with self._lock:
            for conn, deadline in list(self._reading.items()):
                if deadline < now:
                    del self._reading[conn]
                    with contextlib.suppress(OSError):  # its handler's read returns at once
                        conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-response is not news (and no traceback on stderr)


def _refuse(request: socket.socket) -> None:
    """A 503 without a thread: one short non-blocking write, dropped if it does not fit."""
    with contextlib.suppress(OSError):
        request.setblocking(False)
        request.send(BUSY_RESPONSE)


def _handler(
    registry: CollectorRegistry,
    token: str | None,
    request_timeout: float,
    on_error: Callable[[Exception], None] | None,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pool-observer"
        sys_version = ""
        timeout = request_timeout  # socket timeout: a half-sent request is dropped

        def parse_request(self) -> bool:
            parsed = super().parse_request()  # reads the request line and the headers
            cast(_BoundedServer, self.server).request_read(self.connection)
            return parsed

        def handle(self) -> None:
            with observer_thread():  # a scrape's thread is one of the observer's
                super().handle()

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def _serve(self, *, body: bool) -> None:
            if self.path.split("?", 1)[0] not in PATHS:
                self._send(404, b"not found; the metrics are at /metrics\n", "text/plain")
                return
            if not authorized(self.headers.get("Authorization"), token):
                self._send(401, UNAUTHORIZED_BODY, "text/plain", challenge=True)
                return
            try:
                output, content_type = render(registry, self.headers.get("Accept", ""))
            except Exception as exc:  # a collector of the app's own that raises
                if on_error is not None:
                    on_error(exc)
                self._send(500, RENDER_FAILED_BODY, "text/plain")
                return
            self._send(200, output if body else b"", content_type, length=len(output))

        def _send(
            self,
            status: int,
            output: bytes,
            content_type: str,
            *,
            challenge: bool = False,
            length: int | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(output) if length is None else length))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            if challenge:
                self.send_header("WWW-Authenticate", CHALLENGE)
            self.end_headers()
            self.wfile.write(output)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds are not news; the app's logs stay the app's

    return Handler
