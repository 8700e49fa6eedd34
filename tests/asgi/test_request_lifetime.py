"""A request's ASGI scope dies with the request, also behind a real uvicorn with keep-alive.

uvicorn schedules its keep-alive timer with ``loop.call_later`` inside the app's last ``send``,
which captures the current context, the middleware's contextvar included. The timer is cancelled
by the connection's next request, but a cancelled ``TimerHandle`` stays in the loop's heap, with
its context, until its time comes (5 s by default). If the contextvar held the ASGI scope, every
scope (and all it references) lived on for seconds: dozens of them under load, work for the
garbage collector that cost the observer several percent of its HTTP throughput
(bench/README.md, "The HTTP gap").
"""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

import observer
from tests.helpers import hook_errors, sample


class Probe:
    """Put in a request's ASGI scope: alive exactly as long as the scope dict is."""


def probing_app(probes: dict[str, weakref.ref[Probe]]) -> Any:
    """A plain ASGI app that leaves a probe in each request's scope; ``/used*`` paths ask for
    the request's attribution scope as the pool hooks do (so it is created)."""
    from observer.attribution._scope import request_now

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        probe = scope["probe"] = Probe()
        probes[scope["path"]] = weakref.ref(probe)
        if scope["path"].startswith("/used"):
            request_now()  # None without the middleware (the bare control)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` behind a real uvicorn (h11, asyncio loop, keep-alive on) in this event loop."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="error",
            lifespan="off",
            ws="none",
            http="h11",
            timeout_keep_alive=30,  # far beyond the test: a timer left in the heap stays there
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # uvicorn has no "started" event to await
            if server.started:
                break
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def scopes_alive_after_next_request(app: Any, first: str) -> bool:
    """Serve ``first`` then one more request on the same keep-alive connection, and tell
    whether ``first``'s ASGI scope is still alive (uvicorn itself keeps only the last
    request's scope of a connection)."""
    probes: dict[str, weakref.ref[Probe]] = {}
    async with serving(app(probes)) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get(first)).text == "ok"
        assert (await http.get("/next")).text == "ok"  # same connection (keep-alive)
        await asyncio.sleep(0.05)
        gc.collect()
        return probes[first]() is not None


@pytest.mark.parametrize("first", ["/plain", "/used"])
async def test_a_served_requests_scope_is_not_kept_alive_by_the_keep_alive_timer(
    registry: CollectorRegistry, first: str
) -> None:
    """Behind uvicorn with keep-alive, a finished request's ASGI scope is freed once the
    connection has moved on to its next request, as it is without the observer (the control):
    what the middleware leaves in the context is a small holder whose reference to the scope
    is dropped when the request ends. Whether or not the request used the pool, it still
    counts on its route."""
    obs = observer.Observer(registry=registry, metrics_path=None)
    try:
        bare_alive = await scopes_alive_after_next_request(probing_app, first)
        observed_alive = await scopes_alive_after_next_request(
            lambda probes: obs.middleware(probing_app(probes)), first
        )
        obs.flush()
    finally:
        obs.close()
    assert not bare_alive  # the control: uvicorn alone frees it
    assert not observed_alive
    assert sample(registry, "sqlalchemy_route_requests_total", route="unmatched") == 2.0
    assert hook_errors(registry) == 0.0


async def test_nothing_of_the_observer_outlives_a_request_served_with_keep_alive(
    registry: CollectorRegistry,
) -> None:
    """The last ``send`` of a response runs in a context without the request: the keep-alive
    timer uvicorn schedules there (kept in the loop's heap for seconds) holds neither the
    request's holder nor its finished RequestScope, so a request that used the pool leaves
    no object of the observer alive once it ended."""
    from observer.attribution._scope import HttpRequest, RequestScope

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, HttpRequest | RequestScope) for o in gc.get_objects())

    obs = observer.Observer(registry=registry, metrics_path=None)
    try:
        before = alive()
        async with (
            serving(obs.middleware(probing_app({}))) as url,
            httpx.AsyncClient(base_url=url) as http,
        ):
            for path in ("/used-1", "/used-2", "/used-3"):  # one keep-alive connection
                assert (await http.get(path)).text == "ok"
            await asyncio.sleep(0.05)
            left = alive() - before
        obs.flush()
    finally:
        obs.close()
    assert left == 0
    assert sample(registry, "sqlalchemy_route_requests_total", route="unmatched") == 3.0


async def test_a_task_the_request_left_running_keeps_only_the_small_holder(
    registry: CollectorRegistry,
) -> None:
    """Code that keeps the request's context after it ended (a task it spawned, a timer) keeps
    the request's finished attribution scope (its later pool use still counts on its route),
    never the ASGI scope."""
    import contextvars

    from observer.attribution._scope import request_now

    probes: dict[str, weakref.ref[Probe]] = {}
    contexts: list[contextvars.Context] = []
    inner = probing_app(probes)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        contexts.append(contextvars.copy_context())
        await inner(scope, receive, send)

    obs = observer.Observer(registry=registry, metrics_path=None)
    try:
        transport = httpx.ASGITransport(app=obs.middleware(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            assert (await http.get("/used")).text == "ok"
        gc.collect()
        finished = contexts[0].run(request_now)
    finally:
        obs.close()
    assert probes["/used"]() is None
    assert finished is not None
    assert (finished.finished, finished.asgi, finished.route) == (True, None, "unmatched")
