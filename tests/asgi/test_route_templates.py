"""Route templates through the real FastAPI / Starlette routers (0.165 / 1.10 and the floors,
0.110.1 / 0.37.2): prefixes, mounts, 404s and a bounded label set, through httpx.ASGITransport."""

from __future__ import annotations

import collections
import re
import uuid
from collections.abc import Iterator
from typing import Any

import fastapi
import httpx
import pytest
from fastapi import APIRouter, FastAPI
from packaging.version import Version
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.convertors import CONVERTOR_TYPES
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Match, Mount, Route

import observer
from observer.attribution._route_templates import UNMATCHED, route_template


def route_labels(registry: CollectorRegistry) -> dict[str, float]:
    """route label -> finished requests, from sqlalchemy_route_requests_total."""
    out: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name == "sqlalchemy_route_requests":
            for s in metric.samples:
                if s.name.endswith("_total") and s.value:
                    out[s.labels["route"]] = s.value
    return out


def build_app() -> FastAPI:
    app = FastAPI()
    orders = APIRouter()

    @orders.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    v1 = APIRouter(prefix="/v1")
    v1.include_router(orders)
    api = APIRouter()
    api.include_router(v1)
    app.include_router(api, prefix="/api")

    @app.get("/plain/{name}")
    async def plain(name: str) -> str:
        return name

    sub = FastAPI()

    @sub.get("/items/{item_id}")
    async def item(item_id: int) -> int:
        return item_id

    inner = FastAPI()

    @inner.get("/deep/{z}")
    async def deep(z: int) -> int:
        return z

    sub.mount("/inner", inner)
    app.mount("/sub", sub)

    async def star(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app.mount(
        "/star",
        Starlette(routes=[Route("/s/{k}", star), Mount("/m", routes=[Route("/n/{q}", star)])]),
    )
    tenant = FastAPI()

    @tenant.get("/things/{thing_id}")
    async def thing(thing_id: int) -> int:
        return thing_id

    app.mount("/tenants/{tenant}", tenant)
    return app


@pytest.fixture
def instrumented(registry: CollectorRegistry) -> Iterator[tuple[FastAPI, observer.Observer]]:
    app = build_app()
    obs = observer.instrument(app, registry=registry, metrics_path=None)
    yield app, obs
    obs.close()


async def get_all(app: Any, paths: list[str], root_path: str = "") -> list[int]:
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return [(await client.get(root_path + path)).status_code for path in paths]


async def test_prefixed_routers_and_mounts_give_full_templates(
    instrumented: tuple[FastAPI, observer.Observer], registry: CollectorRegistry
) -> None:
    """Nested include_router prefixes, mounted FastAPI and Starlette apps (nested too) and a
    mount with a path parameter each count under their full template."""
    app, _ = instrumented
    statuses = await get_all(
        app,
        [
            "/api/v1/orders/3",
            "/plain/a",
            "/sub/items/4",
            "/sub/inner/deep/5",
            "/star/s/1",
            "/star/m/n/2",
            "/tenants/acme/things/7",
            "/tenants/globex/things/8",
        ],
    )
    assert statuses == [200] * 8
    assert route_labels(registry) == {
        "/api/v1/orders/{order_id}": 1.0,
        "/plain/{name}": 1.0,
        "/sub/items/{item_id}": 1.0,
        "/sub/inner/deep/{z}": 1.0,
        "/star/s/{k}": 1.0,
        "/star/m/n/{q}": 1.0,
        "/tenants/{tenant}/things/{thing_id}": 2.0,
    }


async def test_server_root_path_is_not_part_of_the_template(
    instrumented: tuple[FastAPI, observer.Observer], registry: CollectorRegistry
) -> None:
    """A root_path set by the server or a proxy (uvicorn --root-path) is left out of the
    template; mounts below it still count."""
    app, _ = instrumented
    assert await get_all(app, ["/api/v1/orders/1", "/sub/items/2"], root_path="/prefix") == [
        200,
        200,
    ]
    assert route_labels(registry) == {"/api/v1/orders/{order_id}": 1.0, "/sub/items/{item_id}": 1.0}


async def test_installed_fastapi_keeps_include_prefixes_out_of_scope_route(
    registry: CollectorRegistry,
) -> None:
    """Pins the behaviour the resolver works around: FastAPI >= 0.137 puts the original
    APIRoute (no prefix) in scope["route"]; the prefixed template is only in FastAPI's
    effective route context. Older FastAPI (0.110.1, the floor) copies the route with the
    prefixes, so scope["route"] has the full template and there is no such context."""
    app = build_app()
    seen: dict[str, Any] = {}

    async def probe(scope: Any, receive: Any, send: Any) -> None:
        await app(scope, receive, send)
        seen.update(scope)

    await get_all(probe, ["/api/v1/orders/3"])
    if Version(fastapi.__version__) >= Version("0.137"):
        assert seen["route"].path == "/orders/{order_id}"
        context = seen["fastapi"]["effective_route_context"]
        assert context.path_format == "/api/v1/orders/{order_id}"
    else:
        assert seen["route"].path == "/api/v1/orders/{order_id}"
        assert "effective_route_context" not in seen.get("fastapi", {})
    assert route_template(seen) == "/api/v1/orders/{order_id}"


async def test_ten_thousand_distinct_urls_give_a_bounded_label_set(
    instrumented: tuple[FastAPI, observer.Observer], registry: CollectorRegistry
) -> None:
    """5,000 distinct ids on one route and 5,000 paths no route matches: two label values."""
    app, _ = instrumented
    paths = [f"/sub/items/{n}" for n in range(5000)] + [f"/nothing/{n}" for n in range(5000)]
    statuses = await get_all(app, paths)
    assert statuses.count(200) == 5000
    assert statuses.count(404) == 5000
    assert route_labels(registry) == {"/sub/items/{item_id}": 5000.0, UNMATCHED: 5000.0}


async def test_routes_beyond_max_routes_count_as_other(registry: CollectorRegistry) -> None:
    """With max_routes=3, the fourth and fifth distinct templates are counted as 'other'."""
    app = FastAPI()
    for n in range(5):
        app.add_api_route(f"/r{n}/{{x}}", lambda x: x, methods=["GET"])
    obs = observer.instrument(app, registry=registry, metrics_path=None, max_routes=3)
    try:
        assert await get_all(app, [f"/r{n}/1" for n in range(5)]) == [200] * 5
    finally:
        obs.close()
    assert route_labels(registry) == {
        "/r0/{x}": 1.0,
        "/r1/{x}": 1.0,
        "/r2/{x}": 1.0,
        "other": 2.0,
    }


async def test_a_route_that_cannot_be_resolved_never_fails_the_request(
    registry: CollectorRegistry,
) -> None:
    """A matched route whose attributes raise (a framework change) counts as 'unmatched' and
    the response is the app's own."""

    class Hostile:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("new framework internals")

    inner = FastAPI()

    @inner.get("/ok")
    async def ok() -> str:
        return "fine"

    async def breaks_route(scope: Any, receive: Any, send: Any) -> None:
        await inner(scope, receive, send)
        scope["route"] = Hostile()

    obs = observer.Observer(registry=registry, metrics_path=None)
    app = obs.middleware(breaks_route)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/ok")
    finally:
        obs.close()
    assert (response.status_code, response.json()) == (200, "fine")
    assert route_labels(registry) == {UNMATCHED: 1.0}


def test_route_template_of_odd_scopes_is_unmatched() -> None:
    """Scopes without a route, with a route lacking a path, or with odd types give the fixed
    label; a mount prefix that no router accounts for is never used as a label: unmatched."""
    assert route_template({}) == UNMATCHED
    assert route_template({"route": object()}) == UNMATCHED
    assert route_template({"route": Route("/x/{y}", lambda r: None), "root_path": 5}) == "/x/{y}"
    assert (
        route_template(
            {"route": Route("/x", lambda r: None), "root_path": "/a", "app_root_path": "/b"},
            root_path="/c",
        )
        == UNMATCHED
    )
    # root_path grew by "/t/7" but there is no router to map it back to a template
    leaf = Route("/items", lambda r: None)
    scope = {"route": leaf, "path": "/t/7/items", "root_path": "/t/7"}
    assert route_template(scope) == UNMATCHED
    # a router whose mounts do not account for the prefix
    router = Starlette(routes=[Mount("/other/{x}", routes=[leaf])]).router
    assert route_template({**scope, "router": router}) == UNMATCHED
    assert route_template({**scope, "router": router, "root_path": "/other/7"}) == UNMATCHED
    assert (
        route_template(
            {**scope, "router": router, "path": "/other/7/items", "root_path": "/other/7"}
        )
        == "/other/{x}/items"
    )


# -- mounts with parameters: every convertor, nested, at "/", FastAPI sub-apps and routers ---


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def tenant_app() -> Starlette:
    """Mounts with a parameter of each Starlette convertor, nested mounts, a mount at "/" and
    a mounted FastAPI app with prefixed routers (one holding a mount of its own)."""
    tenant_api = FastAPI()
    orders = APIRouter(prefix="/orders")

    @orders.get("/{order_id}")
    async def order(order_id: int) -> int:
        return order_id

    tenant_api.include_router(orders, prefix="/api/{version}")
    shelf = FastAPI()

    @shelf.get("/books/{book}")
    async def book(book: int) -> int:
        return book

    shelves = APIRouter()
    shelves.mount("/shelf/{shelf:int}", shelf)
    tenant_api.include_router(shelves, prefix="/lib/{lib}")
    return Starlette(
        routes=[
            Route("/health", _ok),
            Mount("/s/{tenant}", routes=[Route("/items/{item_id:int}", _ok)]),
            Mount("/i/{tenant:int}", routes=[Route("/items/{item_id:int}", _ok)]),
            Mount("/f/{tenant:float}", routes=[Route("/items/{item_id:int}", _ok)]),
            Mount("/p/{rest:path}", routes=[Route("/leaf", _ok)]),
            Mount("/u/{tenant:uuid}", routes=[Route("/items/{item_id:int}", _ok)]),
            Mount(
                "/org/{org:int}",
                routes=[Mount("/team/{team}", routes=[Route("/members/{member}", _ok)])],
            ),
            Mount("/fa/{tenant:int}", app=tenant_api),
            Mount("/", routes=[Mount("/r/{region:int}", routes=[Route("/z", _ok)])]),
        ]
    )


def included_routers_keep_mounts() -> bool:
    """Whether ``include_router()`` keeps the router's ``Mount`` routes: FastAPI 0.110.1 (the
    floor) copies only its routes and websocket routes and drops mounts, so a path below such
    a mount is a 404 there, whatever observes the app."""
    shelves = APIRouter()
    shelves.mount("/shelf", Starlette())
    app = FastAPI()
    app.include_router(shelves, prefix="/lib")
    probe = {"type": "http", "path": "/lib/shelf/1", "root_path": "", "method": "GET"}
    return any(route.matches(probe)[0] is Match.FULL for route in app.router.routes)


SHELF = "/fa/{tenant}/lib/{lib}/shelf/{shelf}/books/{book}"
TENANT_ROUTES = {
    "/s/{tenant}/items/{item_id}": "/s/t{n}/items/{n}",
    "/i/{tenant}/items/{item_id}": "/i/{n:04d}/items/{n}",
    "/f/{tenant}/items/{item_id}": "/f/{n}.50/items/1",
    "/p/{rest}/leaf": "/p/a{n}/b/leaf",
    "/u/{tenant}/items/{item_id}": "/u/{uuid}/items/1",
    "/org/{org}/team/{team}/members/{member}": "/org/{n:03d}/team/t{n}/members/m{n}",
    "/fa/{tenant}/api/{version}/orders/{order_id}": "/fa/{n:05d}/api/v{n}/orders/{n}",
    SHELF: "/fa/{n}/lib/l{n}/shelf/0{n}/books/{n}",
    "/r/{region}/z": "/r/00{n}/z",
}
if not included_routers_keep_mounts():
    del TENANT_ROUTES[SHELF]  # a 404 on that FastAPI (see above)


def uuid_text(n: int) -> str:
    """The ``n``-th UUID as a path segment: upper-case where Starlette's uuid convertor takes
    it (it then gives lower-case values), lower-case on Starlette 0.37.2 (the floor), whose
    convertor matches lower-case only."""
    text = str(uuid.UUID(int=n))
    return text.upper() if re.fullmatch(CONVERTOR_TYPES["uuid"].regex, text.upper()) else text


def tenant_path(template: str, n: int) -> str:
    """The ``n``-th distinct concrete path of one of TENANT_ROUTES."""
    return TENANT_ROUTES[template].format(n=n, uuid=uuid_text(n))


async def test_each_convertor_behind_a_mount_gives_the_template(
    registry: CollectorRegistry,
) -> None:
    """Behind mounts with str, int, float, path and uuid parameters, nested mounts, a mount at
    "/" and a mounted FastAPI app (prefixed routers, a mount inside an included router), each
    request counts under its full template; a 404 inside a mount is the mount's ``/{path}``;
    the route outside any mount keeps its own."""
    obs = observer.Observer(registry=registry, metrics_path=None)
    app = obs.middleware(tenant_app())
    try:
        paths = ["/health", "/i/0007/nothing"]
        paths += [tenant_path(t, n) for t in TENANT_ROUTES for n in (7, 8)]
        statuses = await get_all(app, paths)
    finally:
        obs.close()
    assert statuses == [200, 404] + [200] * 2 * len(TENANT_ROUTES)
    assert route_labels(registry) == {
        "/health": 1.0,
        "/i/{tenant}/{path}": 1.0,
        **dict.fromkeys(TENANT_ROUTES, 2.0),
    }


async def test_five_thousand_tenants_give_one_label_per_route(registry: CollectorRegistry) -> None:
    """5,000 distinct tenant paths spread over every kind of mount, behind a server root_path:
    one route label per route, none counted as ``other`` (the 200-label budget is untouched)."""
    obs = observer.Observer(registry=registry, metrics_path=None)
    app = obs.middleware(tenant_app())
    templates = list(TENANT_ROUTES)
    try:
        paths = [tenant_path(templates[n % len(templates)], n) for n in range(5000)]
        assert len(set(paths)) == 5000
        statuses = await get_all(app, paths, root_path="/proxy")
    finally:
        obs.close()
    # a Counter, not the list: pytest's diff of two 5,000-item lists takes many minutes
    assert collections.Counter(statuses) == {200: 5000}
    counts = {
        t: float(sum(1 for n in range(5000) if n % len(templates) == i))
        for i, t in enumerate(templates)
    }
    assert route_labels(registry) == counts
    assert len(obs.routes.labels) == len(templates) + 1  # and "none"
