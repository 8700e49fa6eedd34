"""A checkout keeps nothing of its request alive, waiting or not (real PostgreSQL).

SQLAlchemy's async pool takes a connection under ``asyncio.wait_for`` / ``asyncio.timeout``
with ``pool_timeout`` (2.0: on every checkout; 2.1: when it has to wait): the event loop
schedules a timer, which copies the current context, and keeps the cancelled timer (with that
context) in its heap until its time, 30 s by default. Every such request's context outlived it
by that long; with the observer's contextvar in it, so did the request's holder and
attribution scope (bench/README.md, "Checkouts: nothing of a request outlives its pool
timer").
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker

from observer import Observer
from observer.attribution._scope import HttpRequest, RequestScope
from tests.helpers import hook_errors, sample

pytestmark = pytest.mark.postgres

POOL = "pool"


def alive() -> int:
    """The observer's per-request objects alive now."""
    gc.collect()
    return sum(isinstance(o, HttpRequest | RequestScope) for o in gc.get_objects())


def contention_app(obs: Observer, engine: Any) -> Any:
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    api = FastAPI()

    @api.get("/hold")
    async def hold() -> int:
        async with sessions() as session:
            await session.execute(text("SELECT 1"))
            await asyncio.sleep(0.2)  # the one connection stays out: the others wait
        return 1

    @api.get("/wait")
    async def wait() -> int:
        async with sessions() as session:
            return int((await session.execute(text("SELECT 2"))).scalar_one())

    return obs.middleware(api)


async def test_requests_that_waited_for_the_pool_leave_nothing_alive(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """One request holds the pool's only connection while three others wait for it (30 s
    pool_timeout, so their timers stay in the loop's heap for the rest of the test; on
    SQLAlchemy 2.0 the holding request's checkout too): once all have ended, none of their
    holders or attribution scopes is alive, and each waiting request's wait still counts on its
    own route, as do the checkouts."""
    engine = make_engine(pool_size=1, max_overflow=0, pool_timeout=30)
    obs = make_observer()
    obs.watch(engine, name=POOL)
    transport = httpx.ASGITransport(app=contention_app(obs, engine))
    # As in a server (its keep-alive timers), a timer due earlier than the waits' stays in the
    # heap; without one, the loop drops the cancelled 30 s timers at once from the heap's head.
    earlier = asyncio.get_running_loop().call_later(20, lambda: None)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/wait")).json() == 2  # the connection exists: no connect timer
        before = alive()

        async def waiter() -> int:
            await asyncio.sleep(0.05)  # after /hold took the connection
            return int((await client.get("/wait")).json())

        held, *waited = await asyncio.gather(client.get("/hold"), waiter(), waiter(), waiter())
        assert held.json() == 1
        assert waited == [2, 2, 2]
        left = alive() - before
    earlier.cancel()
    obs.flush()
    assert left == 0
    assert sample(registry, "sqlalchemy_route_checkouts_total", route="/wait") == 4.0
    wait_seconds = sample(registry, "sqlalchemy_route_checkout_wait_seconds_total", route="/wait")
    assert wait_seconds is not None
    assert wait_seconds >= 3 * 0.1  # each waited out most of /hold's 0.2 s
    assert hook_errors(registry) == 0.0


async def test_a_checkout_that_times_out_still_counts_its_wait_on_its_route(
    make_engine: Any, make_observer: Any, registry: CollectorRegistry
) -> None:
    """The request is back in the context before a timed-out wait is recorded: it counts on
    the waiting request's route, not outside any request."""
    engine = make_engine(pool_size=1, max_overflow=0, pool_timeout=0.1)
    obs = make_observer()
    obs.watch(engine, name=POOL)
    transport = httpx.ASGITransport(app=contention_app(obs, engine), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:

        async def waiter() -> int:
            await asyncio.sleep(0.05)
            return (await client.get("/wait")).status_code

        held, status = await asyncio.gather(client.get("/hold"), waiter())
    obs.flush()
    assert (held.status_code, status) == (200, 500)  # the app's own TimeoutError, unchanged
    assert sample(registry, "sqlalchemy_pool_checkout_timeouts_total", pool=POOL) == 1.0
    wait_seconds = sample(registry, "sqlalchemy_route_checkout_wait_seconds_total", route="/wait")
    assert wait_seconds is not None
    assert wait_seconds >= 0.1
    assert not sample(registry, "sqlalchemy_route_checkout_wait_seconds_total", route="none")
    assert hook_errors(registry) == 0.0
