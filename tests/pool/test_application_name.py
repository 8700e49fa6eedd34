"""application_name names the app, never the tool, and never overrides the app's own
(issue #13 item 4); the doctor and the sidecar learn it the way the library does."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

import observer
from observer.server._view import application_name_from_env
from observer.sidecar._config import resolve

pytestmark = pytest.mark.postgres


async def shown(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        return str((await conn.execute(text("SHOW application_name"))).scalar())


async def test_no_name_known_sets_none(
    make_engine: Any, make_observer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no option and no OTEL_SERVICE_NAME, connections keep the driver's (empty) name:
    never 'pool-observer'."""
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    engine = make_engine()
    make_observer().watch(engine)
    assert await shown(engine) == ""


async def test_otel_service_name_names_the_connections(
    make_engine: Any, make_observer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_SERVICE_NAME is the app's name: new connections carry it; an option wins over it."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing-api")
    engine = make_engine()
    make_observer().watch(engine)
    assert await shown(engine) == "billing-api"
    other = make_engine()
    obs = observer.Observer(registry=CollectorRegistry(), application_name="billing-worker")
    try:
        obs.watch(other)
        assert await shown(other) == "billing-worker"
    finally:
        obs.close()


async def test_the_apps_own_name_is_never_overridden(
    make_engine: Any, make_observer: Any, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name the app set in asyncpg's server_settings or in the URL query is kept, over the
    option and over OTEL_SERVICE_NAME."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing-api")
    settings = make_engine(connect_args={"server_settings": {"application_name": "billing"}})
    url = make_url(pg_url).set(drivername="postgresql+psycopg", query={"application_name": "url"})
    sync = create_engine(url)
    obs = make_observer(application_name="set-by-option")
    obs.watch(settings, name="settings")
    obs.watch(sync, name="url")
    try:
        assert await shown(settings) == "billing"
        with sync.connect() as conn:
            assert conn.execute(text("SHOW application_name")).scalar() == "url"
    finally:
        sync.dispose()


async def test_instrument_names_connections_after_the_fastapi_title(
    make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """instrument() names connections after the FastAPI app's title; FastAPI's default title
    names no app, so then none is set."""
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    named, untitled = make_engine(), make_engine()
    first = observer.instrument(
        FastAPI(title="Orders"), named, registry=CollectorRegistry(), metrics_path=None
    )
    second = observer.instrument(
        FastAPI(), untitled, registry=CollectorRegistry(), metrics_path=None
    )
    try:
        assert await shown(named) == "Orders"
        assert await shown(untitled) == ""
    finally:
        first.close()
        second.close()


def test_doctor_and_sidecar_learn_the_name_as_the_library_does() -> None:
    """The doctor and the sidecar filter pg_stat_activity by OBSERVER_APPLICATION_NAME, else
    OTEL_SERVICE_NAME, else the empty name the library leaves on connections."""
    assert application_name_from_env({}) == ""
    assert application_name_from_env({"OTEL_SERVICE_NAME": "billing-api"}) == "billing-api"
    both = {"OTEL_SERVICE_NAME": "billing-api", "OBSERVER_APPLICATION_NAME": "billing"}
    assert application_name_from_env(both) == "billing"
    url = {"OBSERVER_DATABASE_URL": "postgresql://postgres@127.0.0.1/x"}
    config = resolve(argparse.Namespace(), {**url, "OTEL_SERVICE_NAME": "billing-api"})
    assert config.application_name == "billing-api"
