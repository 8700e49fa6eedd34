"""The metrics on a port of their own: a small threaded HTTP server (option ``metrics_port``).

Scrapes then never touch the app's event loop nor its public port; it binds ``127.0.0.1`` unless
told otherwise, and asks for the bearer token when one is configured.
"""

from __future__ import annotations

import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry

from observer._sweeper import observer_thread
from observer.metrics._exposition import CHALLENGE, UNAUTHORIZED_BODY, authorized, render
from observer.settings import ConfigurationError

PATHS = ("/metrics", "/")


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
    ) -> None:
        """``share_port``: the workers of one multi-process server all bind the port
        (``SO_REUSEPORT``, same user only); the kernel spreads scrapes over them, and each
        serves every worker's metrics."""
        handler = _handler(registry, token)
        server_class = type(
            "MetricsHTTPServer",
            (ThreadingHTTPServer,),
            {"allow_reuse_port": share_port, "daemon_threads": True},
        )
        try:
            self._server = server_class((host, port), handler)
        except OSError as exc:
            raise ConfigurationError(
                f"metrics_port {port} on {host} cannot be used ({exc.strerror or exc}); choose a "
                "free port, 0 for any, or None to serve the metrics only on metrics_path"
            ) from None
        self._wake, self._waker = socket.socketpair()  # close() writes to _waker
        self._thread = threading.Thread(
            target=self._serve, name="pool-observer-metrics", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        # Blocks in select() until a scrape or close(): serve_forever() polls every 0.5 s, and
        # its allocations could set off a garbage collection on this thread (_sweeper.py).
        server, wake = self._server, self._wake
        with observer_thread():
            while wake not in select.select((server, wake), (), ())[0]:
                server.handle_request()

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


def _handler(registry: CollectorRegistry, token: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pool-observer"
        sys_version = ""

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
            output, content_type = render(registry, self.headers.get("Accept", ""))
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
            if challenge:
                self.send_header("WWW-Authenticate", CHALLENGE)
            self.end_headers()
            self.wfile.write(output)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds are not news; the app's logs stay the app's

    return Handler
