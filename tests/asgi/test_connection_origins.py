"""The live page's connections name where the holding request's sessions were opened, also
once its response has ended: the leaked sessions still holding a connection are the ones whose
line matters most."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

pytestmark = pytest.mark.postgres

HERE = Path(__file__).name


async def test_a_connection_held_after_the_response_names_its_sessions_line(
    make_engine: Any, make_observer: Any
) -> None:
    """A request leaves its session open and returns: its connection's row kept the route and
    request id but lost "sessions opened at" when the response ended (the request's session
    records are dropped then, to break a reference cycle). The line stays, without the cycle."""
    engine = make_engine(pool_size=2, max_overflow=0)
    obs = make_observer(request_end_grace_seconds=30)
    obs.watch(engine, name="pool")
    kept: list[AsyncSession] = []
    api = FastAPI()

    @api.get("/leak")
    async def leak() -> int:
        session = AsyncSession(engine)
        kept.append(session)
        await session.execute(text("SELECT 1"))
        return 1

    transport = httpx.ASGITransport(app=obs.middleware(api))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            assert (await client.get("/leak")).status_code == 200
        (held,) = obs.snapshot()["connections"]
        assert held["route"] == "/leak"
        assert held["request_id"]
        assert [
            o.split(":")[0].endswith(HERE) and o.endswith(" in leak")
            for o in held["session_origins"]
        ] == [True], held
        (session_row,) = obs.snapshot()["sessions"]
        assert held["session_origins"] == [session_row["origin"]]
    finally:
        for session in kept:
            await session.close()
