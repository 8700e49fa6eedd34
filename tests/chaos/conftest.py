"""Fixtures of the chaos suite: a database of its own on the test PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from tests.helpers import PG_HOST, PG_PORT, PG_USER, admin, postgres_up, require


@pytest.fixture(scope="module")
def chaos_url() -> Iterator[str]:
    """A fresh database for one chaos module (other tests' idle connections stay out of the
    server-side counts); dropped at the end."""
    require(postgres_up(), f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}")
    name = f"observer_chaos_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
