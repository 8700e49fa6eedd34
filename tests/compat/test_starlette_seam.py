"""observer/_compat/starlette.py on the installed Starlette: the route it re-derives is the one
the router took (and, where the router records it in ``scope["route"]``, the same object)."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Match, Mount, Route

from observer._compat.starlette import routed_route

RELEASE = f"starlette {version('starlette')}"


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _other(request: Request) -> PlainTextResponse:
    return PlainTextResponse("other")


async def served(app: Any, paths: list[str], root_path: str = "") -> list[dict[str, Any]]:
    """The scope of each request as the app left it (routers update it in place)."""
    scopes: list[dict[str, Any]] = []

    async def probe(scope: Any, receive: Any, send: Any) -> None:
        await app(scope, receive, send)
        scopes.append(dict(scope))

    transport = httpx.ASGITransport(app=probe, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path in paths:
            await client.get(root_path + path)
    return scopes


async def test_routed_route_is_the_route_the_router_took() -> None:
    """Plain routes (one endpoint shared by two), a wrong method, nested mounts with
    parameters, a mount at "/", a 404 inside a mount: the re-derived route is the router's
    choice; a 404 no route took has none. Behind a server root_path too."""
    health = Route("/health", _ok)
    shared = Route("/shared/{x:int}", _ok)
    post_only = Route("/post-only", _other, methods=["POST"])
    member = Route("/members/{member}", _ok)
    team = Mount("/team/{team}", routes=[member])
    org = Mount("/org/{org:int}", routes=[team])
    z = Route("/z", _ok)
    region = Mount("/r/{region:int}", routes=[z])
    root = Mount("/", routes=[region])
    app = Starlette(routes=[health, shared, post_only, org, root])
    expected: dict[str, BaseRoute | None] = {
        "/health": health,
        "/shared/7": shared,
        "/post-only": root,  # a full match (the mount at "/") wins over a partial one
        "/org/1/team/a/members/b": member,
        "/org/1/nothing": org,  # a 404 inside the mount: the router stopped at the mount
        "/r/3/z": z,
        "/nothing": root,  # a mount at "/" takes every path the routes before it did not
    }
    plain = Starlette(routes=[health, post_only])
    plain_expected = {
        "/health": health,
        "/post-only": post_only,  # 405: the partial match handled it
        "/nothing": None,
    }
    for target, paths in ((app, expected), (plain, plain_expected)):
        for root_path in ("", "/proxy"):
            scopes = await served(target, list(paths), root_path)
            for path, scope in zip(paths, scopes, strict=True):
                recorded = scope.pop("route", None)
                if recorded is not None:  # a router that records its choice: the seam agrees
                    assert recorded is paths[path], (RELEASE, path)
                got = routed_route(scope, root_path)
                assert got is paths[path], (RELEASE, path, root_path, got)


def test_routed_route_of_odd_scopes_is_none() -> None:
    """No router, no endpoint, a path the routes do not give that endpoint (a middleware
    rewrote it), a route whose matching raises: None, never an exception."""
    leaf = Route("/items/{n:int}", _ok)
    router = Starlette(routes=[leaf]).router
    scope = {"type": "http", "path": "/items/1", "root_path": "", "method": "GET"}
    assert routed_route({**scope, "router": router, "endpoint": _ok}) is leaf
    assert routed_route({**scope, "endpoint": _ok}) is None
    assert routed_route({**scope, "router": router}) is None
    assert routed_route({**scope, "router": router, "endpoint": _other}) is None
    assert routed_route({**scope, "router": router, "endpoint": _ok, "path": "/x"}) is None

    class Hostile(BaseRoute):
        def matches(self, scope: Any) -> tuple[Match, dict[str, Any]]:
            raise RuntimeError("new framework internals")

    hostile = Starlette(routes=[Hostile(), leaf]).router
    assert routed_route({**scope, "router": hostile, "endpoint": _ok}) is None
