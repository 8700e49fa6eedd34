"""The demo's expected errors are answers or counted lines, never tracebacks."""

from __future__ import annotations

import asyncio
import io
import logging
import logging.config
from collections import Counter
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import create_async_engine

from observer.demo._quiet import OUTSIDE, ErrorTally, Findings, uvicorn_log_config
from observer.demo.app import create_app


def test_an_error_logged_with_a_traceback_becomes_one_counted_line() -> None:
    """Through uvicorn's log config, an exception logged by uvicorn is counted; while quiet
    nothing is printed, afterwards one line with its type and message, no traceback."""
    errors: Counter[str] = Counter()
    tally = ErrorTally(errors)
    logging.config.dictConfig(uvicorn_log_config(tally))
    handler = logging.getLogger("uvicorn").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    log = logging.getLogger("uvicorn.error")
    try:
        raise RuntimeError("pool exhausted\nsecond line")
    except RuntimeError:
        log.exception("Exception in ASGI application")
        tally.quiet = False
        log.exception("Exception in ASGI application")
    log.error("[Errno 98] address already in use")  # no exception: passes unchanged
    assert errors == {"uvicorn.error: RuntimeError: pool exhausted": 2}
    assert stream.getvalue().splitlines() == [
        "ERROR:    Exception in ASGI application (uvicorn.error: RuntimeError: pool exhausted)",
        "ERROR:    [Errno 98] address already in use",
    ]


def test_findings_keep_each_hint_by_route_and_the_origin_it_names() -> None:
    """Every event is counted; one with a hint is a problem of its route (with its reason),
    and its origin is remembered for that route; an event without a route is outside any."""
    findings = Findings()
    findings.collect({"event": "pool.checkout_timeout", "route": "/a"})
    for _ in range(2):
        findings.collect(
            {
                "event": "session.leak",
                "reason": "garbage_collected",
                "route": "/a",
                "origin": "app.py:3 in a",
                "hint": "close it",
            }
        )
    findings.collect({"event": "pool.created_after_startup", "route": None, "hint": "share"})
    assert findings.events == {"pool.checkout_timeout": 1, "session.leak": 2,
                               "pool.created_after_startup": 1}  # fmt: skip
    assert findings.problems == {
        ("/a", "session.leak garbage_collected", "close it"): 2,
        (OUTSIDE, "pool.created_after_startup", "share"): 1,
    }
    assert findings.origins == {"/a": {"app.py:3 in a": 2}}


def test_a_pool_timeout_is_answered_503_and_counted_by_route(tmp_path: Path) -> None:
    """The demo app answers a checkout that timed out with 503 and Retry-After (not a 500 and
    a traceback) and counts it under the route's template."""

    async def scenario() -> None:
        url = f"sqlite+aiosqlite:///{tmp_path}/demo.db"
        engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.05)
        app = create_app(engine)
        transport = httpx.ASGITransport(app=app)
        try:
            async with app.router.lifespan_context(app):
                held = await engine.connect()  # the pool's only connection
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                    response = await http.get("/orders/7")
                await held.close()
        finally:
            await engine.dispose()
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json() == {"detail": "no database connection free; retry"}
        assert app.state.pool_timeouts == {"/orders/{order_id}": 1}

    asyncio.run(scenario())
