"""The demo app: healthy endpoints next to the classic ways a pool melts down.

Every endpoint below is written the way real apps get it wrong (or right); the comments say
which incident each one reproduces. The observer does not know any of this: it finds them.
"""

# No ``from __future__ import annotations`` here: FastAPI resolves the endpoints' annotations
# at runtime, and the session dependency below is defined inside create_app().
import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, text, update
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from observer.demo._leaked import LeakedSessions

metadata = MetaData()
orders = Table(
    "demo_orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("item", String(40), nullable=False),
    Column("quantity", Integer, nullable=False),
)
ORDER_COUNT = 100
SLOW_SECONDS = 0.2
CARRIER_SECONDS = 0.3  # the carrier's API the ship endpoint awaits inside its transaction
MAX_STRAY_ENGINES = 50  # bounds the engine-per-request bug so the demo stays small


async def create_schema(engine: AsyncEngine) -> None:
    """The demo table with a hundred orders (idempotent)."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # several workers may start at once
            await conn.execute(text("SELECT pg_advisory_xact_lock(7342)"))
        await conn.run_sync(metadata.create_all)
        count = (await conn.execute(select(func.count()).select_from(orders))).scalar_one()
        if count == 0:
            await conn.execute(
                insert(orders),
                [{"item": f"item-{n}", "quantity": n % 7 + 1} for n in range(1, ORDER_COUNT + 1)],
            )


async def pool_exhausted(request: Request, exc: Exception) -> JSONResponse:
    """No connection came free within pool_timeout: an expected answer under overload, so 503
    with Retry-After (counted by route for the demo's report), not a 500 and a traceback."""
    route = request.scope.get("route")
    request.app.state.pool_timeouts[getattr(route, "path", "unmatched")] += 1
    return JSONResponse(
        {"detail": "no database connection free; retry"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The schema before serving, the leaked sessions collected while serving (from a plain
    task, see _leaked.py), the engines created per request disposed of after."""
    await create_schema(app.state.engine)
    app.state.leaked_sessions.start()
    yield
    await app.state.leaked_sessions.stop()
    for stray in app.state.stray_engines:
        await stray.dispose()


def create_app(engine: AsyncEngine) -> FastAPI:
    """The demo app on ``engine`` (not instrumented: the caller does that, in one line)."""
    app = FastAPI(title="pool-observer demo", lifespan=lifespan)
    app.state.engine = engine
    Session = async_sessionmaker(engine, expire_on_commit=False)
    stray_engines: list[AsyncEngine] = []
    app.state.stray_engines = stray_engines
    # the demo's plumbing, not one of its bugs: where the leaking routes drop their sessions
    leaked = app.state.leaked_sessions = LeakedSessions()
    app.state.pool_timeouts = Counter()  # route template -> requests answered 503
    app.add_exception_handler(PoolTimeout, pool_exhausted)

    async def get_session() -> AsyncIterator[AsyncSession]:
        async with Session() as session:  # the right way: closed however the request ends
            yield session

    SessionDep = Annotated[AsyncSession, Depends(get_session)]

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int, session: SessionDep) -> dict[str, Any]:
        """Healthy: one short query through a session closed by its dependency."""
        row = (await session.execute(select(orders).where(orders.c.id == order_id))).first()
        return {"id": order_id, "found": row is not None}

    @app.get("/reports/daily")
    async def daily_report(session: SessionDep) -> dict[str, Any]:
        """A connection held across a slow await (a call to another service, say): this route
        hogs the pool while doing nothing with the database."""
        total = (await session.execute(select(func.sum(orders.c.quantity)))).scalar_one()
        await asyncio.sleep(SLOW_SECONDS)  # the transaction (and its connection) stays open
        return {"total": total}

    @app.get("/orders/{order_id}/ship")
    async def ship_order(order_id: int, session: SessionDep) -> dict[str, Any]:
        """Held idle: the transaction stays open across a (simulated) HTTP call to the carrier:
        its connection sits idle while others wait; pool.held_idle names the line after it."""
        where = orders.c.id == order_id
        quantity = (await session.execute(select(orders.c.quantity).where(where))).scalar()
        await asyncio.sleep(CARRIER_SECONDS)  # await carrier.book(order): not the database
        await session.execute(update(orders).where(where).values(quantity=orders.c.quantity))
        await session.commit()
        return {"id": order_id, "shipped": quantity is not None}

    @app.get("/cart/{cart_id}")
    async def get_cart(cart_id: int) -> dict[str, Any]:
        """Leak: a session opened by hand and never closed. It holds its connection until the
        garbage collector finds it (the 'non-checked-in connection' warning)."""
        session = Session()
        rows = (await session.execute(select(orders.c.item).limit(3))).scalars().all()
        leaked.drop(session)  # the demo's plumbing: collected from a plain task (_leaked.py)
        return {"cart": cart_id, "items": list(rows)}

    @app.get("/checkout/{cart_id}")
    async def checkout(cart_id: int) -> dict[str, Any]:
        """Leak: an error swallowed before the session is closed."""
        session = Session()
        try:
            await session.execute(select(orders.c.id).limit(1))
            await session.execute(text("SELECT * FROM demo_missing_table"))
            await session.close()
        except Exception:
            leaked.drop(session)  # the demo's plumbing: collected from a plain task (_leaked.py)
            return {"cart": cart_id, "status": "retry later"}  # the session is left open
        return {"cart": cart_id, "status": "ok"}  # pragma: no cover

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        """The engine-per-request smell: a new engine (and pool) for every call, kept around."""
        engine_here = create_async_engine(engine.url, pool_size=1, max_overflow=0)
        if len(stray_engines) >= MAX_STRAY_ENGINES:
            await stray_engines.pop(0).dispose()
        stray_engines.append(engine_here)
        async with engine_here.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(orders))).scalar_one()
        return {"orders": count}

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory observer.demo.app:app_from_env`` (several workers):
    the database is ``OBSERVER_DEMO_DATABASE_URL``, instrumented with ``observer.instrument``."""
    import observer

    url = os.environ.get("OBSERVER_DEMO_DATABASE_URL")
    if not url:
        raise RuntimeError(
            "OBSERVER_DEMO_DATABASE_URL is not set; give it a URL such as "
            "postgresql+asyncpg://user@host/db"
        )
    engine = create_async_engine(url, pool_size=5, max_overflow=5, pool_timeout=2)
    app = create_app(engine)
    observer.instrument(app, engine)
    return app
