"""Killing a connection's server process (``pg_terminate_backend``) so that the next statement
on it fails the same way every time.

The server answers ``pg_terminate_backend`` before the backend has gone: the backend then
sends a FATAL error to its idle client, leaves ``pg_stat_activity`` and only then closes the
socket. A statement the client starts between that error and the end of the stream fails in
asyncpg (0.29 and 0.32 alike, no SQLAlchemy or observer involved) with ``InternalClientError:
cannot switch to state 11; another operation (2) is in progress``, which is not a disconnect to
SQLAlchemy: the connection is not invalidated and goes back to the pool broken. Once the client
has read the end of the stream it fails with ``InterfaceError: connection is closed``, a
disconnect. Measured on this machine, 200 kills each: asyncpg alone (no SQLAlchemy, no
observer) hit that error on 85 (0.29.0) and 102 (0.32.0) statements run right after the call,
on 31 and 54 run once the server no longer listed the backend, and on none run once
``Connection.is_closed()``; through SQLAlchemy 2.0.38 on 27 bare and 25 watched, each leaving
a broken connection for the next checkout. The two tests that kill a held connection's
backend (tests/pool/test_pool.py, tests/core/test_logs.py; 100 runs each) failed 63 and 49
times in 200 on the floors before they waited, none in 200 after.
"""

from __future__ import annotations

import asyncio
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


async def terminate_backend(admin: AsyncEngine, victim: AsyncConnection, within: float = 10) -> int:
    """``pg_terminate_backend`` of ``victim``'s server process, from a connection of ``admin``;
    returns once the server no longer lists that process and ``victim``'s asyncpg connection
    has read the end of its stream, so that the next statement on ``victim`` is a disconnect
    (a ``DBAPIError`` that invalidates it). Returns the killed process id."""
    raw = (await victim.get_raw_connection()).driver_connection
    pid = int((await victim.execute(text("SELECT pg_backend_pid()"))).scalar_one())
    async with admin.connect() as killer:
        killed = await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        assert killed.scalar_one() is True
        await killer.commit()
        deadline = time.monotonic() + within
        listed = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
        while (await killer.execute(listed, {"pid": pid})).scalar_one():
            await killer.commit()  # pg_stat_activity is read once per transaction
            assert time.monotonic() < deadline, f"backend {pid} still listed after {within}s"
            await asyncio.sleep(0.005)
    while not raw.is_closed():
        assert time.monotonic() < deadline, f"the client never saw backend {pid} end"
        await asyncio.sleep(0.005)
    return pid
