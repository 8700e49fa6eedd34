"""``observer sidecar``: serve a multi-worker app's metrics plus PostgreSQL's view of it.

``GET /metrics`` aggregates the workers' files in ``PROMETHEUS_MULTIPROC_DIR`` (a fresh registry
per scrape, so nothing is counted twice) and adds the server view polled from
``pg_stat_activity``; ``GET /healthz`` answers 200 while the sidecar works (the database being
down is reported by ``pg_up 0``, not by the health check).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from observer.metrics._multiprocess import MultiprocessDirectory
from observer.sidecar import _config as sidecar_config
from observer.sidecar._config import SidecarConfig
from observer.sidecar._poller import ServerPoller, ServerViewCollector

log = logging.getLogger("observer.sidecar")


class Sidecar:
    """The poller thread plus a threaded HTTP server; ``start()``, then ``close()``."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.directory = (
            MultiprocessDirectory(
                config.multiproc_dir, prune_dead_workers=config.prune_dead_workers
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
            if path == "/metrics":
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

        def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``observer sidecar``."""
    parser.epilog = (
        "exit codes: 0 stopped by SIGTERM/SIGINT (or healthy with --check-health), "
        "1 unhealthy, 2 bad settings"
    )
    sidecar_config.add_arguments(parser)
    parser.add_argument(
        "--check-health",
        action="store_true",
        help="ask the sidecar on --port for /healthz; exit 0 if healthy (Docker HEALTHCHECK)",
    )


def check_health(config: SidecarConfig, timeout: float = 3) -> int:
    """0 when the sidecar listening on the configured port says it is healthy, else 1."""
    host = "127.0.0.1" if config.address in {"0.0.0.0", "", "::"} else config.address
    if ":" in host:
        host = f"[{host}]"
    try:
        with urllib.request.urlopen(f"http://{host}:{config.port}/healthz", timeout=timeout):
            return 0
    except (urllib.error.URLError, OSError):
        return 1


def run(args: argparse.Namespace) -> int:
    """Run the sidecar until SIGTERM or SIGINT; returns the exit code."""
    try:
        config = sidecar_config.resolve(args, require_source=not args.check_health)
        if args.check_health:
            return check_health(config)
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        sidecar = Sidecar(config)
    except (ValueError, OSError) as exc:
        print(f"observer sidecar: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        sidecar.start()
        poller = sidecar.poller
        log.info(
            "serving /metrics and /healthz on http://%s:%d (database: %s, multiproc dir: %s)",
            config.address,
            sidecar.port,
            poller.url if poller is not None else "none",
            config.multiproc_dir or "none",
        )
        stop.wait()
    finally:
        sidecar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0
