"""The sidecar's HTTP server: /metrics (the workers' files and the server view), /healthz."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from observer.metrics._exposition import CHALLENGE, UNAUTHORIZED_BODY, authorized
from observer.metrics._multiprocess import MultiprocessDirectory
from observer.sidecar._config import SidecarConfig
from observer.sidecar._poller import ServerPoller, ServerViewCollector

log = logging.getLogger("observer.sidecar")


class Sidecar:
    """The poller thread plus a threaded HTTP server; ``start()``, then ``close()``."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.directory = (
            MultiprocessDirectory(
                config.multiproc_dir,
                prune_dead_workers=config.prune_dead_workers,
                outside_the_app=True,
            )
            if config.multiproc_dir
            else None
        )
        self.poller = (
            ServerPoller(
                config.database_url,
                application_name=config.application_name,
                interval=config.poll_interval,
                statement_timeout_ms=config.statement_timeout_ms,
                connect_timeout=config.connect_timeout,
                databases=config.databases,
            )
            if config.database_url
            else None
        )
        self._server = ThreadingHTTPServer((config.address, config.port), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="observer-sidecar-http", daemon=True
        )

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._server.server_address[1])

    def start(self) -> Sidecar:
        """Start polling and serving."""
        if self.poller is not None:
            self.poller.start()
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and polling; joins both threads. Safe before start()."""
        if self._thread.is_alive():
            self._server.shutdown()  # blocks until serve_forever returns: only if it runs
            self._thread.join(5)
        self._server.server_close()
        if self.poller is not None:
            self.poller.stop()

    def healthy(self) -> bool:
        """Serving, and the poller (if any) is not stuck."""
        return self.poller is None or self.poller.alive()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """One scrape: a fresh registry with the workers' metrics and the server view."""
        registry = CollectorRegistry()
        if self.directory is not None:
            self.directory.register(registry)
        if self.poller is not None:
            registry.register(ServerViewCollector(self.poller))
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type

    def __enter__(self) -> Sidecar:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _handler(sidecar: Sidecar) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pool-observer-sidecar"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics" and not authorized(
                self.headers.get("Authorization"), sidecar.config.metrics_token
            ):
                self._send(401, UNAUTHORIZED_BODY, extra={"WWW-Authenticate": CHALLENGE})
            elif path == "/metrics":
                try:
                    body, content_type = sidecar.render(self.headers.get("Accept"))
                except Exception as exc:
                    log.exception("scrape failed")
                    self._send(500, f"scrape failed: {type(exc).__name__}\n".encode())
                    return
                self._send(200, body, content_type)
            elif path == "/healthz":
                if sidecar.healthy():
                    self._send(200, b"ok\n")
                else:
                    self._send(503, b"poller stalled\n")
            else:
                self._send(404, b"not found: try /metrics or /healthz\n")

        def _send(
            self,
            status: int,
            body: bytes,
            content_type: str = "text/plain",
            extra: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
