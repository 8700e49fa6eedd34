"""``observer sidecar`` on the command line: its options, the health check, and the run."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import urllib.error
import urllib.request
from types import FrameType

from observer.sidecar import _config as sidecar_config
from observer.sidecar._config import SidecarConfig
from observer.sidecar._http import Sidecar

log = logging.getLogger("observer.sidecar")


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
            "serving /metrics%s and /healthz on http://%s:%d (database: %s, multiproc dir: %s)",
            " (bearer token required)" if config.metrics_token else "",
            config.address,
            sidecar.port,
            poller.shown if poller is not None else "none",
            config.multiproc_dir or "none",
        )
        stop.wait()
    finally:
        sidecar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("stopped")
    return 0
