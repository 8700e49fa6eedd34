"""The live page, rendered by a real headless Chromium against a real server."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import observer
from tests.helpers import require

pytestmark = pytest.mark.postgres

TOKEN = "live-" + uuid.uuid4().hex
LEAK_ROW_RGB = (255, 214, 214)  # tr.leak td { background: #ffd6d6 } in observer/asgi/_live_page.py
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=4000",
]


async def chromium(tmp_path: Path, *args: str) -> str:
    binary = shutil.which("chromium")
    require(binary is not None, "chromium is not installed (apt-get install chromium)")
    assert binary is not None
    profile = tmp_path / f"profile-{uuid.uuid4().hex}"
    proc = await asyncio.create_subprocess_exec(
        binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0
    return out.decode()


async def test_live_page_shows_the_pool_and_a_leaked_session(
    make_engine: Any, registry: CollectorRegistry, tmp_path: Path
) -> None:
    """A session left open past the leak threshold appears in the live page's table, marked as a
    leak (a red row in the screenshot), with its route and the line that opened it; the pool
    row shows the connection it holds. The page runs under its Content-Security-Policy and
    behind the metrics token, given in the URL as a browser does."""
    engine = make_engine(pool_size=3, max_overflow=0)
    app = FastAPI()
    kept: list[AsyncSession] = []

    @app.get("/reports/{name}")
    async def leak(name: str) -> dict[str, str]:
        session = AsyncSession(engine)
        await session.execute(text("SELECT 1"))  # opened here
        kept.append(session)  # never closed
        return {"report": name}

    obs = observer.instrument(
        app,
        engine,
        registry=registry,
        live_page_path="/observer",
        metrics_token=TOKEN,  # the browser brings it as ?token= and the page sends it on
        leak_threshold_seconds=0.2,
        sweep_interval_seconds=0.05,
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/observer?token={TOKEN}"
        await chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{port}/reports/daily")
        await asyncio.sleep(0.4)  # past the threshold: the sweeper marks it too_old

        dom = await chromium(tmp_path, "--dump-dom", url)
        rows = re.findall(r'<tr class="leak">(.*?)</tr>', dom, re.S)
        assert len(rows) == 1
        cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[0])
        assert cells[1] == "/reports/{name}"
        assert re.search(r"test_live_page\.py:\d+ in leak$", cells[2])
        assert cells[3] == "too_old"
        pool = re.search(r'<table id="pools">.*?<tbody>(.*?)</tbody>', dom, re.S)
        assert pool is not None
        pool_cells = re.findall(r"<td[^>]*>(.*?)</td>", pool.group(1))
        assert pool_cells[1:5] == ["3", "3", "1", "0"]  # size, max, in use, idle

        shot = tmp_path / "live.png"
        await chromium(tmp_path, "--window-size=1100,700", f"--screenshot={shot}", url)
        if keep := os.environ.get("OBSERVER_KEEP_SCREENSHOT"):
            shutil.copy(shot, keep)
        image = Image.open(shot).convert("RGB")
        assert image.size == (1100, 700)
        leak_pixels = dict((rgb, n) for n, rgb in image.getcolors(maxcolors=1 << 20) or []).get(
            LEAK_ROW_RGB, 0
        )
        assert leak_pixels > 5000  # one table row's width and height of the leak colour
    finally:
        server.should_exit = True
        await serving
        for session in kept:
            await session.close()
        obs.close()


async def test_live_page_shows_each_connection_executing_or_idle_and_for_how_long(
    make_engine: Any, registry: CollectorRegistry, tmp_path: Path
) -> None:
    """While one request holds its transaction across a slow call (an await that is not the
    database) and another runs a long statement, the page's connections table shows the first
    as idle (highlighted) and the second as executing, each with its route and for how long."""
    import httpx

    engine = make_engine(pool_size=3, max_overflow=0)
    app = FastAPI()
    release = asyncio.Event()

    @app.get("/checkout/{n}")
    async def slow_call(n: int) -> int:
        async with AsyncSession(engine) as session, session.begin():
            await session.execute(text("SELECT 1"))
            await release.wait()  # the slow HTTP call, inside the transaction
        return n

    @app.get("/report")
    async def report() -> int:
        async with AsyncSession(engine) as session:
            await session.execute(text("SELECT pg_sleep(4)"))
        return 0

    obs = observer.instrument(app, engine, registry=registry, live_page_path="/observer")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            calls = [
                asyncio.create_task(client.get("/checkout/7")),
                asyncio.create_task(client.get("/report")),
            ]
            await asyncio.sleep(0.5)
            dom = await chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{port}/observer")
            release.set()
            assert [(await call).status_code for call in calls] == [200, 200]
        table = re.search(r'<table id="connections">.*?<tbody>(.*?)</tbody>', dom, re.S)
        assert table is not None
        rows = re.findall(r"<tr( class=\"idle\")?>(.*?)</tr>", table.group(1), re.S)
        shown = {}
        for idle_class, row_html in rows:
            cells = re.findall(r"<td[^>]*>(.*?)</td>", row_html)
            shown[cells[4]] = (bool(idle_class), cells[1], float(cells[2]), float(cells[0]))
        assert set(shown) == {"/checkout/{n}", "/report"}
        assert shown["/checkout/{n}"][:2] == (True, "idle")
        assert shown["/report"][:2] == (False, "executing")
        for _, _, state_for, held in shown.values():
            assert 0.3 <= state_for <= held + 0.1
    finally:
        release.set()
        server.should_exit = True
        await serving
        obs.close()


async def test_live_page_is_off_unless_enabled(
    make_engine: Any, registry: CollectorRegistry
) -> None:
    """Without live_page_path the page does not exist (the app answers 404)."""
    import httpx

    engine = make_engine()
    app = FastAPI()
    obs = observer.instrument(app, engine, registry=registry)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/observer")).status_code == 404
            assert (await client.get("/observer/snapshot.json")).status_code == 404
    finally:
        obs.close()


async def _get(
    app: Any,
    path: str,
    root_path: str = "",
    *,
    method: str = "GET",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request through ``app`` as a bare ASGI call: status, headers and body."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:  # pragma: no cover - the page reads no body
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": root_path,
        "query_string": query,
        "headers": headers or [],
    }
    await app(scope, receive, send)
    start, body = sent
    response_headers = {key.decode(): value.decode() for key, value in start["headers"]}
    return start["status"], response_headers, body["body"]


async def test_live_page_serves_the_snapshot_callable_it_is_given() -> None:
    """The page needs no Observer: it serves what its snapshot callable returns, as JSON next
    to the page, and the page fetches it there (behind a proxy's root_path too)."""
    import json

    from observer._types import Snapshot
    from observer.asgi._live_page import LivePage

    snapshot: Snapshot = {
        "pools": [
            {
                "name": "main",
                "size": 5,
                "max_connections": 15,
                "checked_out": 2,
                "checked_in": 3,
                "overflow": 0,
                "waiting": 1,
            }
        ],
        "live_pools": 1,
        "sessions": [],
        "leaks": [{"reason": "too_old", "route": "/r", "origin": "unknown", "count": 4}],
        "connections": [],
    }
    calls: list[int] = []

    def take() -> Snapshot:
        calls.append(1)
        return snapshot

    page = LivePage(take, "/observer/")
    status, headers, body = await _get(page, "/observer/snapshot.json")
    assert (status, headers["content-type"], headers["cache-control"]) == (
        200,
        "application/json",
        "no-store",
    )
    assert json.loads(body) == snapshot
    assert calls == [1]
    status, headers, body = await _get(page, "/observer", root_path="/api")
    assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert b'const SNAPSHOT = "/api/observer/snapshot.json";' in body
    assert calls == [1]  # the page itself reads nothing
    assert [page.handles(p) for p in ("/observer", "/observer/", "/observer/x", "/")] == [
        True,
        True,
        False,
        False,
    ]


TEST_SNAPSHOT_JSON = "test_snapshot_json_has_the_snapshot_keys_and_values"


def _origin_of(marker: str, function: str) -> str:
    """The origin the observer shows for the line of this file ending with ``marker``
    (relative to the working directory, as the observer shows it)."""
    lines = Path(__file__).read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if text.endswith(marker))
    here = os.path.relpath(__file__)
    return f"{__file__ if here.startswith('..') else here}:{line} in {function}"


async def test_snapshot_json_has_the_snapshot_keys_and_values(
    make_engine: Any, registry: CollectorRegistry
) -> None:
    """Through the middleware, ``snapshot.json`` is ``Observer.snapshot()``: each pool's
    numbers, each open session (age, route, request id, origin, leak) and the leaks so far."""
    import httpx

    engine = make_engine(pool_size=2, max_overflow=1)
    app = FastAPI()
    obs = observer.instrument(
        app,
        engine,
        registry=registry,
        live_page_path="/observer",
        leak_threshold_seconds=0.2,
        sweep_interval_seconds=0.05,
    )
    try:
        pool = obs.pool_names[0]
        async with AsyncSession(engine) as session:
            await session.execute(text("SELECT 1"))  # snapshot: opened here
            await asyncio.sleep(0.4)  # past the threshold: the sweeper counts a too_old leak
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                response = await client.get("/observer/snapshot.json")
    finally:
        obs.close()
    snap = response.json()
    assert sorted(snap) == ["connections", "leaks", "live_pools", "pools", "sessions"]
    assert snap["pools"] == [
        {
            "name": pool,
            "size": 2,
            "max_connections": 3,
            "checked_out": 1,
            "checked_in": 0,
            "overflow": 0,
            "waiting": 0,
        }
    ]
    assert snap["live_pools"] == 1
    [open_session] = snap["sessions"]
    age = open_session.pop("age_seconds")
    origin = _origin_of("# snapshot: opened here", TEST_SNAPSHOT_JSON)
    assert open_session == {
        "route": "none",
        "request_id": None,
        "origin": origin,
        "leak": "too_old",
    }
    assert 0.2 <= age < 30
    assert snap["leaks"] == [{"reason": "too_old", "route": "none", "origin": origin, "count": 1}]
    [connection] = snap["connections"]  # the session's, idle since its SELECT 1
    held, idle_for = connection.pop("held_seconds"), connection.pop("state_seconds")
    assert connection == {
        "pool": pool,
        "route": "none",
        "request_id": None,
        "state": "idle",
        "session_origins": [],
    }
    assert 0.4 <= idle_for <= held < 30


# -- the page behind the token, its headers, and what it embeds -----------------------------

EMPTY: Any = {"pools": [], "live_pools": 0, "sessions": [], "leaks": [], "connections": []}


async def test_the_page_and_its_json_ask_for_the_metrics_token() -> None:
    """With metrics_token (and metrics_path=None), the page and snapshot.json answer 401 with
    ``WWW-Authenticate: Bearer`` without the token, with a wrong one or another scheme; the
    bearer header or the ``token`` query parameter opens both; the token is not in the page."""
    import httpx
    from fastapi import FastAPI

    app = FastAPI()
    obs = observer.instrument(
        app,
        registry=CollectorRegistry(),
        metrics_path=None,
        live_page_path="/observer",
        metrics_token=TOKEN,
    )
    results: dict[str, tuple[int, str | None]] = {}
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for path in ("/observer", "/observer/snapshot.json"):
                for name, params, headers in (
                    ("none", {}, {}),
                    ("wrong header", {}, {"authorization": f"Bearer {TOKEN}x"}),
                    ("basic", {}, {"authorization": f"Basic {TOKEN}"}),
                    ("wrong query", {"token": TOKEN[:-1]}, {}),
                    ("empty query", {"token": ""}, {}),
                    ("header", {}, {"authorization": f"Bearer {TOKEN}"}),
                    ("query", {"token": TOKEN}, {}),
                ):
                    response = await client.get(path, params=params, headers=headers)
                    challenge = response.headers.get("www-authenticate")
                    results[f"{path} {name}"] = (response.status_code, challenge)
                    if response.status_code == 200 and path == "/observer":
                        assert TOKEN not in response.text
    finally:
        obs.close()
    denied = (401, 'Bearer realm="metrics"')
    assert results == {
        f"{path} {name}": denied if name not in ("header", "query") else (200, None)
        for path in ("/observer", "/observer/snapshot.json")
        for name in (
            "none", "wrong header", "basic", "wrong query", "empty query", "header", "query"
        )
    }  # fmt: skip


def _scripts(body: bytes) -> list[str]:
    return re.findall(r"<script>(.*?)</script>", body.decode(), re.S)


def _csp_hash(source: str) -> str:
    import base64
    import hashlib

    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


async def test_every_response_sends_the_security_headers() -> None:
    """The page, its JSON, the 401 and a 405 each send nosniff, no-store, no-referrer and a
    Content-Security-Policy that loads nothing but the page's own script and style (by hash)
    and fetches from its own origin only."""
    from observer.asgi._live_page import LivePage

    page = LivePage(lambda: EMPTY, "/observer", token=TOKEN)
    bearer = [(b"authorization", f"Bearer {TOKEN}".encode())]
    html = await _get(page, "/observer", headers=bearer)
    responses = {
        "page": html,
        "json": await _get(page, "/observer/snapshot.json", headers=bearer),
        "401": await _get(page, "/observer"),
        "405": await _get(page, "/observer", method="POST", headers=bearer),
        "HEAD": await _get(page, "/observer", method="HEAD", headers=bearer),
    }
    assert {name: status for name, (status, _, _) in responses.items()} == {
        "page": 200,
        "json": 200,
        "401": 401,
        "405": 405,
        "HEAD": 200,
    }
    nothing = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    [script] = _scripts(html[2])
    style = re.findall(r"<style>(.*?)</style>", html[2].decode(), re.S)[0]
    page_policy = (
        f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    for name, (_, headers, _) in responses.items():
        assert headers["x-content-type-options"] == "nosniff", name
        assert headers["cache-control"] == "no-store", name
        assert headers["referrer-policy"] == "no-referrer", name
        policy = page_policy if name in ("page", "HEAD") else nothing
        assert headers["content-security-policy"] == policy, name
    assert responses["HEAD"][2] == b""
    assert responses["405"][1]["allow"] == "GET, HEAD"


async def test_root_path_is_embedded_as_a_safe_script_literal() -> None:
    """A hostile root_path (from a proxy header) cannot close the script, open a comment or
    break the line: it is JSON with <, >, & and U+2028/U+2029 escaped, and reads back as the
    same string."""
    import json

    from observer.asgi._live_page import LivePage

    hostile = "/p</script><script>alert(1)</script><!--&\u2028\u2029"
    status, _, body = await _get(LivePage(lambda: EMPTY, "/observer"), "/observer", hostile)
    assert status == 200
    [script] = _scripts(body)
    assert "alert(1)" not in body.decode().replace(script, "")  # never outside the script
    [literal] = re.findall(r"^const SNAPSHOT = (.*);$", script, re.M)
    assert literal == (
        '"/p\\u003c/script\\u003e\\u003cscript\\u003ealert(1)\\u003c/script\\u003e'
        '\\u003c!--\\u0026\\u2028\\u2029/observer/snapshot.json"'
    )
    assert json.loads(literal) == hostile + "/observer/snapshot.json"


async def test_a_snapshot_that_raises_is_a_counted_503() -> None:
    """A snapshot callable that raises gives a JSON 503 with a fixed message (not the
    exception's text) and is reported to ``failed``; the page itself still loads."""
    from observer.asgi._live_page import LivePage

    failures: list[Exception] = []

    def broken() -> Any:
        raise RuntimeError("secret detail")

    page = LivePage(broken, "/observer", failed=failures.append)
    status, headers, body = await _get(page, "/observer/snapshot.json")
    assert (status, headers["content-type"], body) == (
        503,
        "application/json",
        b'{"error": "the snapshot could not be read"}',
    )
    assert [str(exc) for exc in failures] == ["secret detail"]
    assert (await _get(page, "/observer"))[0] == 200
