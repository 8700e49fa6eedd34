"""The middleware on a real FastAPI app and a real PostgreSQL: culprit and victim routes,
request-end leaks with real yield dependencies, Server-Timing, exceptions and cancellation."""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from structlog.testing import capture_logs

import observer
from tests.helpers import hook_errors, sample

pytestmark = pytest.mark.postgres

GRACE = 0.1  # request_end_grace_seconds in these tests (the default, 1 s, is measured)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def route_sample(registry: CollectorRegistry, metric: str, route: str) -> float | None:
    return sample(registry, metric, route=route)


def leaks(registry: CollectorRegistry, reason: str, route: str) -> float:
    value = sample(registry, "sqlalchemy_orm_session_leaks_total", reason=reason, route=route)
    return value or 0.0


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The usual yield dependency: FastAPI closes the session after the response is sent."""
    session = request.app.state.Session()
    try:
        yield session
    finally:
        await session.close()


DbSession = Annotated[AsyncSession, Depends(get_session)]


def make_app(engine: AsyncEngine) -> FastAPI:
    Session = async_sessionmaker(engine, expire_on_commit=False)
    app = FastAPI()
    app.state.Session = Session

    @app.get("/hog")
    async def hog(session: DbSession) -> int:
        await session.execute(text("SELECT 1"))
        await asyncio.sleep(0.4)  # holds its connection while it sleeps
        await session.commit()
        return 1

    @app.get("/victim")
    async def victim(session: DbSession) -> int:
        value = (await session.execute(text("SELECT 2"))).scalar_one()
        await session.commit()
        return int(value)

    @app.get("/proper/{n}")
    async def proper(n: int, session: DbSession) -> int:
        return int(
            (await session.execute(text("SELECT CAST(:n AS integer)"), {"n": n})).scalar_one()
        )

    @app.get("/leaky/{n}")
    async def leaky(n: int) -> int:
        session = Session()  # opened, used, never closed
        return int(
            (await session.execute(text("SELECT CAST(:n AS integer)"), {"n": n})).scalar_one()
        )

    @app.get("/slow")
    async def slow(session: DbSession) -> int:
        await session.execute(text("SELECT pg_sleep(5)"))
        return 0  # pragma: no cover - cancelled first

    @app.get("/boom")
    async def boom(session: DbSession) -> int:
        await session.execute(text("SELECT 1"))
        raise ValueError("the app's own error")

    @app.get("/teapot")
    async def teapot() -> int:
        raise HTTPException(status_code=418, detail="short and stout")

    return app


@pytest.fixture
def setup(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> Callable[..., tuple[FastAPI, observer.Observer]]:
    made: list[observer.Observer] = []

    def build(pool_size: int = 1, **options: Any) -> tuple[FastAPI, observer.Observer]:
        engine = make_engine(pool_size=pool_size, max_overflow=0, pool_timeout=10)
        app = make_app(engine)
        options.setdefault("request_end_grace_seconds", GRACE)
        obs = observer.instrument(
            app, engine, registry=registry, metrics_path=None, capture_origin=True, **options
        )
        made.append(obs)
        return app, obs

    yield build  # type: ignore[misc]
    for obs in made:
        obs.close()


async def test_culprit_and_victim_counters_single_them_out(
    setup: Callable[..., tuple[FastAPI, observer.Observer]], registry: CollectorRegistry
) -> None:
    """With one connection in the pool, /hog holds it for 0.4 s while /victim waits for it:
    the hold counter names /hog, the wait counter names /victim, and while /hog sleeps the
    held-by-route gauge shows its one connection."""
    app, _ = setup()
    async with client(app) as http:
        hog = asyncio.create_task(http.get("/hog"))
        await asyncio.sleep(0.15)
        held_during = route_sample(registry, "sqlalchemy_route_connections_held", "/hog")
        victim = await http.get("/victim")
        assert (await hog).status_code == 200
    assert victim.status_code == 200
    assert held_during == 1.0
    assert route_sample(registry, "sqlalchemy_route_connections_held", "/hog") == 0.0
    hold = "sqlalchemy_route_connection_hold_seconds_total"
    wait = "sqlalchemy_route_checkout_wait_seconds_total"
    assert route_sample(registry, hold, "/hog")
    assert route_sample(registry, hold, "/hog") >= 0.4  # type: ignore[operator]
    assert route_sample(registry, hold, "/victim") < 0.1  # type: ignore[operator]
    assert route_sample(registry, wait, "/victim") >= 0.2  # type: ignore[operator]
    assert route_sample(registry, wait, "/hog") < 0.1  # type: ignore[operator]
    assert route_sample(registry, "sqlalchemy_route_checkouts_total", "/hog") == 1.0
    assert route_sample(registry, "sqlalchemy_route_checkouts_total", "/victim") == 1.0
    assert route_sample(registry, "sqlalchemy_route_requests_total", "/victim") == 1.0
    assert hook_errors(registry) == 0.0


async def test_server_timing_header_carries_wait_and_hold_in_ms(
    setup: Callable[..., tuple[FastAPI, observer.Observer]], registry: CollectorRegistry
) -> None:
    """The response of /hog carries Server-Timing with its DB hold (>= 400 ms: the session is
    committed before the response starts) and its wait; the request.end log line (opt-in)
    carries the same numbers."""
    app, _ = setup(log_requests=True)
    async with client(app) as http:
        with capture_logs() as logs:
            response = await http.get("/hog", headers={"X-Request-ID": "req-42"})
    header = response.headers["server-timing"]
    match = re.fullmatch(r"db-wait;dur=(\d+\.\d{3}), db-hold;dur=(\d+\.\d{3})", header)
    assert match is not None, header
    wait_ms, hold_ms = float(match[1]), float(match[2])
    assert hold_ms >= 400.0
    assert wait_ms < 100.0
    [end] = [e for e in logs if e["event"] == "request.end"]
    assert end["route"] == "/hog"
    assert end["request_id"] == "req-42"
    assert end["status"] == 200
    assert end["method"] == "GET"
    assert end["checkouts"] == 1
    assert end["sessions_opened"] == 1
    assert end["db_wait_ms"] == pytest.approx(wait_ms, abs=0.001)
    assert end["db_hold_ms"] == pytest.approx(hold_ms, abs=0.001)


async def test_server_timing_can_be_turned_off_and_requests_are_not_logged_by_default(
    setup: Callable[..., tuple[FastAPI, observer.Observer]],
) -> None:
    """server_timing=False: no header; without log_requests no request.end line."""
    app, _ = setup(server_timing=False)
    async with client(app) as http:
        with capture_logs() as logs:
            response = await http.get("/victim")
    assert response.status_code == 200
    assert "server-timing" not in response.headers
    assert [e for e in logs if e["event"] == "request.end"] == []


@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_leaky_endpoint_is_one_request_end_leak_per_request(
    setup: Callable[..., tuple[FastAPI, observer.Observer]], registry: CollectorRegistry
) -> None:
    """Three requests (each in its own span) to an endpoint that opens a session, uses it and
    never closes it: three request_end leaks for its route, each logged with the origin in this
    file and the request's id and trace; when the garbage collector later drops the same
    sessions they are not counted again (a resolution, how="garbage_collected"), and they and
    the reclaimed connections are logged under the same route and trace, although it runs
    outside the requests."""
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    app, obs = setup(pool_size=4)
    traces: list[str] = []
    async with client(app) as http:
        with capture_logs() as logs:
            for n in range(3):
                with tracer.start_as_current_span(f"request {n}") as span:
                    traces.append(format(span.get_span_context().trace_id, "032x"))
                    response = await http.get(f"/leaky/{n}", headers={"x-request-id": f"r{n}"})
                    assert response.json() == n
                await asyncio.sleep(GRACE + 0.15)  # past the grace period
            gc.collect()  # the dropped sessions: resolved, not counted again
            obs.flush()
    assert leaks(registry, "request_end", "/leaky/{n}") == 3.0
    assert leaks(registry, "garbage_collected", "/leaky/{n}") == 0.0  # each leak counts once
    resolved = "sqlalchemy_orm_session_leaks_resolved_total"
    labels = {"reason": "request_end", "route": "/leaky/{n}", "how": "garbage_collected"}
    assert sample(registry, resolved, **labels) == 3.0  # what became of them, counted apart
    by_reason: dict[str, list[dict[str, Any]]] = {}
    for entry in logs:
        if entry["event"] == "session.leak":
            by_reason.setdefault(entry["reason"], []).append(entry)
        elif entry["event"] == "session.released_after_leak":
            by_reason.setdefault(entry["how"], []).append(entry)
    request_end = by_reason["request_end"]
    assert [e["request_id"] for e in request_end] == ["r0", "r1", "r2"]
    assert [e["trace_id"] for e in request_end] == traces
    for entry in request_end:
        assert entry["route"] == "/leaky/{n}"
        assert entry["log_level"] == "warning"
        assert "tests/asgi/test_middleware.py" in entry["origin"]
        assert "in leaky" in entry["origin"]
    collected = sorted(by_reason["garbage_collected"], key=lambda e: e["request_id"])
    assert [(e["request_id"], e["trace_id"]) for e in collected] == list(
        zip(["r0", "r1", "r2"], traces, strict=True)
    )
    reclaimed = [e for e in logs if e["event"] == "pool.connection_reclaimed"]
    assert sorted((e["request_id"], e["route"], e["trace_id"]) for e in reclaimed) == [
        (f"r{n}", "/leaky/{n}", traces[n]) for n in range(3)
    ]


async def test_proper_yield_dependency_is_never_a_leak(
    setup: Callable[..., tuple[FastAPI, observer.Observer]], registry: CollectorRegistry
) -> None:
    """Twenty requests (ten at a time) to an endpoint whose yield dependency closes the session
    after the response is sent: zero leaks of any reason, and nothing left open."""
    app, obs = setup()
    async with client(app) as http:
        for _ in range(2):
            responses = await asyncio.gather(*(http.get(f"/proper/{n}") for n in range(10)))
            assert [r.json() for r in responses] == list(range(10))
    await asyncio.sleep(GRACE + 0.2)
    obs.flush()
    for reason in ("request_end", "garbage_collected", "too_old"):
        assert leaks(registry, reason, "/proper/{n}") == 0.0
    assert sample(registry, "sqlalchemy_orm_sessions_open") == 0.0
    assert sample(registry, "sqlalchemy_orm_sessions_opened_total") == 20.0


async def test_default_grace_period_covers_a_session_closed_after_the_response(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """With the default grace (1 s), a session a task of the request closes 200 ms after the
    response (later than any close measured by bench/grace_period.py) is not a leak; one still
    open is, one second after its response."""
    engine = make_engine(pool_size=2, max_overflow=0)
    Session = async_sessionmaker(engine)
    later: list[asyncio.Task[None]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        session = Session()
        await session.execute(text("SELECT 1"))

        async def close_soon() -> None:
            await asyncio.sleep(0.2)
            await session.close()

        if scope["path"] == "/late-close":
            later.append(asyncio.create_task(close_soon()))
        else:
            later.append(asyncio.create_task(asyncio.sleep(2, session)))  # type: ignore[arg-type]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    obs = observer.Observer(registry=registry, metrics_path=None)
    obs.watch(engine)
    try:
        async with client(obs.middleware(app)) as http:
            await http.get("/late-close")
            await http.get("/never")
            await asyncio.sleep(0.7)
            assert leaks(registry, "request_end", "unmatched") == 0.0
            await asyncio.sleep(0.6)
            assert leaks(registry, "request_end", "unmatched") == 1.0
        for task in later:
            session = await task
            if session is not None:
                await session.close()  # type: ignore[attr-defined]
    finally:
        obs.close()


async def test_app_exceptions_and_status_codes_pass_through_unchanged(
    setup: Callable[..., tuple[FastAPI, observer.Observer]], registry: CollectorRegistry
) -> None:
    """The app's ValueError reaches the caller as the same exception; an HTTPException keeps
    its status and body; both requests are counted for their routes, with no hook error."""
    app, _ = setup()
    async with client(app) as http:
        with pytest.raises(ValueError, match="the app's own error"):
            await http.get("/boom")
        teapot = await http.get("/teapot")
    assert teapot.status_code == 418
    assert teapot.json() == {"detail": "short and stout"}
    assert route_sample(registry, "sqlalchemy_route_requests_total", "/boom") == 1.0
    assert route_sample(registry, "sqlalchemy_route_requests_total", "/teapot") == 1.0
    assert route_sample(registry, "sqlalchemy_route_checkouts_total", "/boom") == 1.0
    await asyncio.sleep(GRACE + 0.1)
    assert leaks(registry, "request_end", "/boom") == 0.0
    assert hook_errors(registry) == 0.0


async def test_client_disconnect_mid_query_leaves_no_false_leak_and_exact_gauges(
    setup: Callable[..., tuple[FastAPI, observer.Observer]], registry: CollectorRegistry
) -> None:
    """A request cancelled while its query runs (the client went away) gets CancelledError;
    after the grace period there is no leak, no open session, and no connection held."""
    app, obs = setup()
    async with client(app) as http:
        task = asyncio.create_task(http.get("/slow"))
        await asyncio.sleep(0.3)
        assert route_sample(registry, "sqlalchemy_route_connections_held", "/slow") == 1.0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.sleep(GRACE + 0.2)
    obs.flush()
    assert leaks(registry, "request_end", "/slow") == 0.0
    assert sample(registry, "sqlalchemy_orm_sessions_open") == 0.0
    pool = obs.pool_names[0]
    assert sample(registry, "sqlalchemy_pool_checked_out_connections", pool=pool) == 0.0
    assert route_sample(registry, "sqlalchemy_route_connections_held", "/slow") == 0.0
    assert route_sample(registry, "sqlalchemy_route_requests_total", "/slow") == 1.0
    assert hook_errors(registry) == 0.0


async def test_request_id_comes_from_the_header_when_sane(
    setup: Callable[..., tuple[FastAPI, observer.Observer]],
) -> None:
    """X-Request-ID is used when printable and at most 128 characters; otherwise a fresh
    32-hex id is generated."""
    app, _ = setup(log_requests=True)
    async with client(app) as http:
        with capture_logs() as logs:
            await http.get("/teapot", headers={"x-request-id": "abc-123"})
            await http.get("/teapot", headers={"x-request-id": "x" * 129})
            await http.get("/teapot", headers={"x-request-id": "bad\tid"})
            await http.get("/teapot")
    ids = [e["request_id"] for e in logs if e["event"] == "request.end"]
    assert ids[0] == "abc-123"
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids[1:]), ids
    assert len(set(ids)) == 4


async def test_middleware_wraps_any_asgi_app_and_passes_other_scopes_through(
    registry: CollectorRegistry,
) -> None:
    """Observer.middleware() on a plain ASGI app: HTTP requests are scoped (code that asks,
    like the pool hooks, gets the request's RequestScope), lifespan and websocket scopes go
    through untouched. A request that never asks costs no scope and gets no Server-Timing, and
    still counts on its route."""
    from observer.attribution._scope import request_now

    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == "/uses-the-pool":
            seen.append((scope["type"], request_now()))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    obs = observer.Observer(registry=registry, metrics_path=None)
    wrapped = obs.middleware(app)
    try:
        await wrapped({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
        await wrapped({"type": "websocket", "path": "/ws"}, None, None)  # type: ignore[arg-type]
        async with client(wrapped) as http:
            response = await http.get("/uses-the-pool")
            plain = await http.get("/x")
    finally:
        obs.close()
    assert response.text == "ok"
    assert response.headers["server-timing"] == "db-wait;dur=0.000, db-hold;dur=0.000"
    assert plain.text == "ok"
    assert "server-timing" not in plain.headers
    assert [(kind, scope is None) for kind, scope in seen] == [
        ("lifespan", True),
        ("websocket", True),
        ("http", False),
    ]
    assert sample(registry, "sqlalchemy_route_requests_total", route="unmatched") == 2.0


async def test_real_server_client_disconnect_leaves_no_false_leak(
    setup: Callable[..., tuple[FastAPI, observer.Observer]], registry: CollectorRegistry
) -> None:
    """Through a real uvicorn server, a client that gives up after 0.1 s on a 0.5 s query: the
    server finishes the request, its yield dependency closes the session after the response,
    and there is no leak, no open session and no connection held."""
    import socket

    import uvicorn

    app, obs = setup()

    @app.get("/half-second")
    async def half_second(session: DbSession) -> int:
        await session.execute(text("SELECT pg_sleep(0.5)"))
        return 1

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="error", lifespan="off", ws="none"
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # uvicorn has no "started" event to await
            if server.started:
                break
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=0.1) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/half-second")
        await asyncio.sleep(0.5 + GRACE + 0.3)
    finally:
        server.should_exit = True
        await serving
    obs.flush()
    assert route_sample(registry, "sqlalchemy_route_requests_total", "/half-second") == 1.0
    assert (
        route_sample(registry, "sqlalchemy_route_connection_hold_seconds_total", "/half-second")
        >= 0.5
    )  # type: ignore[operator]
    assert leaks(registry, "request_end", "/half-second") == 0.0
    assert sample(registry, "sqlalchemy_orm_sessions_open") == 0.0
    assert route_sample(registry, "sqlalchemy_route_connections_held", "/half-second") == 0.0
    assert hook_errors(registry) == 0.0


async def test_too_old_leak_in_flight_names_the_running_route(
    setup: Callable[..., tuple[FastAPI, observer.Observer]], registry: CollectorRegistry
) -> None:
    """A session open longer than leak_threshold_seconds is reported by the sweeper while its
    request still runs, under the route the router matched (resolved live)."""
    app, _ = setup(leak_threshold_seconds=0.1, sweep_interval_seconds=0.05)
    async with client(app) as http:
        with capture_logs() as logs:
            assert (await http.get("/hog", headers={"x-request-id": "old-1"})).json() == 1
    assert leaks(registry, "too_old", "/hog") == 1.0
    [event] = [e for e in logs if e["event"] == "session.leak"]
    assert (event["reason"], event["route"], event["request_id"]) == ("too_old", "/hog", "old-1")


async def test_observer_failures_never_fail_the_request(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If starting the request scope (with log_requests, where every request gets one at once)
    or building Server-Timing raises (a bug of ours), the response is the app's own and the
    error is counted in observer_hook_errors_total."""
    from observer.attribution._scope import RequestScope, request_now

    async def app(scope: Any, receive: Any, send: Any) -> None:
        request_now()  # as the pool hooks do: the request's scope exists from here on
        await send({"type": "http.response.start", "status": 201, "headers": [(b"x-app", b"1")]})
        await send({"type": "http.response.body", "body": b"made"})

    obs = observer.Observer(registry=registry, metrics_path=None)
    eager_registry = CollectorRegistry()
    eager = observer.Observer(registry=eager_registry, metrics_path=None, log_requests=True)
    try:
        async with client(obs.middleware(app)) as http:
            with monkeypatch.context() as patch:
                patch.setattr(RequestScope, "hold_now", lambda self, now: 1 / 0)
                timing_broken = await http.get("/a")
        async with client(eager.middleware(app)) as http:
            with monkeypatch.context() as patch:
                patch.setattr(eager.requests, "begin", lambda scope: 1 / 0)
                begin_broken = await http.get("/b")
        obs.flush()
        eager.flush()
    finally:
        obs.close()
        eager.close()
    for response in (timing_broken, begin_broken):
        assert (response.status_code, response.text, response.headers["x-app"]) == (
            201,
            "made",
            "1",
        )
        assert "server-timing" not in response.headers
    assert sample(registry, "observer_hook_errors_total", hook="server_timing") == 1.0
    assert sample(eager_registry, "observer_hook_errors_total", hook="begin_request") == 1.0


async def test_streaming_response_ends_at_its_last_chunk_and_metrics_path_is_served(
    registry: CollectorRegistry,
) -> None:
    """A response in three body messages gets Server-Timing on its start and is complete for
    the client; the metrics path is answered by the middleware, not the app."""
    from observer.attribution._scope import request_now

    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        request_now()  # as the pool hooks do: the request's scope exists from here on
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for chunk in (b"a", b"b"):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"c"})

    obs = observer.Observer(registry=registry)
    try:
        async with client(obs.middleware(app)) as http:
            streamed = await http.get("/stream")
            metrics = await http.get("/metrics")
    finally:
        obs.close()
    assert streamed.text == "abc"
    assert streamed.headers["server-timing"].startswith("db-wait;dur=")
    assert metrics.status_code == 200
    assert 'sqlalchemy_route_requests_total{route="unmatched"} 1.0' in metrics.text
    assert calls == ["/stream"]


async def test_work_a_request_left_running_is_attributed_after_it_ended(
    registry: CollectorRegistry,
) -> None:
    """Code that runs in a request's context after it ended (a task it spawned): for a request
    that used the pool it is the request's finished scope (its later holds count on its route
    straight away); for one that never did it is outside any request, and no scope is made."""
    import contextvars

    from observer.attribution._scope import request_now

    contexts: dict[str, contextvars.Context] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/used":
            request_now()
        contexts[scope["path"]] = contextvars.copy_context()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    obs = observer.Observer(registry=registry, metrics_path=None)
    try:
        async with client(obs.middleware(app)) as http:
            await http.get("/used")
            await http.get("/plain")
    finally:
        obs.close()
    used = contexts["/used"].run(request_now)
    assert used is not None
    assert used.finished
    assert used.asgi is None
    assert used.route == "unmatched"
    assert contexts["/plain"].run(request_now) is None
    assert sample(registry, "sqlalchemy_route_requests_total", route="unmatched") == 2.0
