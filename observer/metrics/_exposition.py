"""Serving the metrics: an ASGI endpoint that renders off the event loop."""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from observer._asgi_types import Receive, Scope, Send
from observer.metrics._families import multiprocess_mode
from observer.metrics._multiprocess import MultiprocessDirectory


def render(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The exposition of ``registry`` (or of every worker's files in multiprocess mode) in the
    format the ``Accept`` header asks for (OpenMetrics or the Prometheus text format)."""
    if multiprocess_mode():
        # Workers that died without mark_process_dead (uvicorn --workers has no child_exit hook;
        # a SIGKILLed worker calls nothing) would show their last gauges for ever: drop them.
        # The workers of one server share a pid namespace, so a missing pid is a dead worker.
        _prune_dead_workers()
        # A fresh registry per scrape: the collector reads every worker's files.
        registry = CollectorRegistry(support_collectors_without_names=True)
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def _prune_dead_workers() -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112 (the legacy name)
    if path and os.path.isdir(path):
        MultiprocessDirectory(path).prune()


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries the bearer ``token`` (always, when no token
    is configured). Constant-time: the comparison does not leak how much of a guess matched."""
    if token is None:
        return True
    if not header:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


UNAUTHORIZED_BODY = b"a bearer token is required (Authorization: Bearer <metrics_token>)\n"
RENDER_FAILED_BODY = b"the metrics could not be rendered\n"
CHALLENGE = 'Bearer realm="metrics"'


class MetricsEndpoint:
    """``GET`` the metrics; rendering runs in a thread so a slow scrape never blocks requests.

    With a ``token``, a request without ``Authorization: Bearer <token>`` gets a 401. A render
    that raises (a collector of the app's own) is a 500 reported to ``on_error``, never an
    exception into the server."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        token: str | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.registry = registry
        self._token = token
        self._on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", "text/plain; charset=utf-8")
            return
        accept = ""
        authorization = None
        for key, value in scope.get("headers", ()):
            if key == b"accept":
                accept = value.decode("latin-1")
            elif key == b"authorization":
                authorization = value.decode("latin-1")
        if not authorized(authorization, self._token):
            await _respond(
                send,
                401,
                UNAUTHORIZED_BODY,
                "text/plain; charset=utf-8",
                extra=[(b"www-authenticate", CHALLENGE.encode())],
            )
            return
        try:
            body, content_type = await asyncio.to_thread(render, self.registry, accept)
        except Exception as exc:
            if self._on_error is not None:
                self._on_error(exc)
            await _respond(send, 500, RENDER_FAILED_BODY, "text/plain; charset=utf-8")
            return
        await _respond(send, 200, b"" if scope["method"] == "HEAD" else body, content_type)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode("latin-1")),
                (b"x-content-type-options", b"nosniff"),
                (b"cache-control", b"no-store"),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
