"""Bad input fails at once with an error that names what is wrong and how to fix it: one test per
error (options themselves are in test_settings.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

import observer
from observer import ConfigurationError, Observer
from observer.cli import main
from observer.doctor import check_engine, check_sync_engine


@pytest.fixture
def obs() -> Iterator[Observer]:
    o = Observer(registry=CollectorRegistry())
    yield o
    o.close()


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = create_engine("sqlite://")
    yield e
    e.dispose()


@pytest.fixture
async def async_engine() -> Any:
    e = create_async_engine("sqlite+aiosqlite://")
    yield e
    await e.dispose()


NOT_ENGINES = {
    "a URL string": ("postgresql://db/app", "str"),
    "a URL object": (make_url("postgresql://db/app"), "URL"),
    "a sessionmaker": (sessionmaker(), "sessionmaker"),
    "an async_sessionmaker": (async_sessionmaker(), "async_sessionmaker"),
    "None": (None, "NoneType"),
}


@pytest.mark.parametrize("what", list(NOT_ENGINES))
def test_watch_names_what_it_got_instead_of_an_engine(obs: Observer, what: str) -> None:
    """watch() of anything but an Engine/AsyncEngine says what it got and what to pass."""
    value, type_name = NOT_ENGINES[what]
    with pytest.raises(
        ConfigurationError,
        match=rf"expected a SQLAlchemy Engine or AsyncEngine, got {type_name}; pass the object "
        r"returned by create_engine\(\) or create_async_engine\(\)",
    ):
        obs.watch(value)


def test_unwatch_of_a_pool_name_says_to_pass_the_engine(obs: Observer, engine: Engine) -> None:
    """unwatch() takes the engine, not its pool name."""
    obs.watch(engine, name="main")
    with pytest.raises(
        ConfigurationError, match="expected a SQLAlchemy Engine or AsyncEngine, got str"
    ):
        obs.unwatch("main")
    assert obs.pool_names == ["main"]


def test_an_empty_pool_name_is_refused(obs: Observer, engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match=r"name must be a non-empty string \(got ''\)"):
        obs.watch(engine, name="")


def test_renaming_a_watched_engine_needs_unwatch(obs: Observer, engine: Engine) -> None:
    obs.watch(engine, name="main")
    with pytest.raises(
        ConfigurationError, match="already watched as pool 'main'; unwatch\\(\\) it first"
    ):
        obs.watch(engine, name="other")


def test_two_engines_cannot_share_a_pool_name(obs: Observer, engine: Engine) -> None:
    other = create_engine("sqlite://")
    obs.watch(engine, name="main")
    with pytest.raises(ConfigurationError, match="pool name 'main' is already used"):
        obs.watch(other, name="main")
    other.dispose()


def test_a_closed_observer_watches_nothing(engine: Engine) -> None:
    o = Observer(registry=CollectorRegistry())
    o.close()
    with pytest.raises(ConfigurationError, match="this Observer is closed; create a new one"):
        o.watch(engine)


def test_a_registry_holds_one_observer(obs: Observer) -> None:
    with pytest.raises(ConfigurationError, match="another Observer already registered its metrics"):
        Observer(registry=obs.registry)


def test_instrument_needs_a_starlette_app() -> None:
    async def plain_asgi(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(
        ConfigurationError,
        match="instrument\\(\\) needs a Starlette or FastAPI app \\(got function\\)",
    ):
        observer.instrument(plain_asgi, registry=CollectorRegistry())


def test_instrument_with_a_bad_option_changes_nothing() -> None:
    """A bad option fails before the middleware is added or any engine is watched."""
    app = FastAPI()
    with pytest.raises(ConfigurationError, match="max_routes must be a whole number >= 1"):
        observer.instrument(app, registry=CollectorRegistry(), max_routes=0)
    assert app.user_middleware == []


def test_instrument_refuses_other_options_on_a_shared_registry() -> None:
    registry = CollectorRegistry()
    first = observer.instrument(FastAPI(), registry=registry, max_routes=10)
    try:
        with pytest.raises(ConfigurationError, match="an observer with other options already"):
            observer.instrument(FastAPI(), registry=registry, max_routes=20)
    finally:
        first.close()


async def test_doctor_sync_check_of_an_async_engine(async_engine: AsyncEngine) -> None:
    """The sync-only doctor entry point says to await the async one."""
    with pytest.raises(
        ConfigurationError,
        match=r"check_sync_engine\(\) needs a sync Engine \(got AsyncEngine\); for an "
        r"AsyncEngine use: await check_engine\(engine\)",
    ):
        check_sync_engine(async_engine)  # type: ignore[arg-type]


async def test_doctor_async_check_of_a_sync_engine(engine: Engine) -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"check_engine\(\) needs an AsyncEngine \(got Engine\); for a sync Engine call "
        r"check_sync_engine\(engine\)",
    ):
        await check_engine(engine)  # type: ignore[arg-type]


# -- missing optional dependencies ----------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "argv", "message"),
    [
        (
            "asyncpg",
            ["doctor", "postgresql://app@db/app"],
            "observer doctor: observer doctor needs the 'asyncpg' package, which is not "
            "installed; install it with: pip install 'pool-observer[sidecar]'",
        ),
        (
            "asyncpg",
            ["sidecar", "--database-url", "postgresql://app@db/app"],
            "observer sidecar: observer sidecar --database-url needs the 'asyncpg' package, "
            "which is not installed; install it with: pip install 'pool-observer[sidecar]'",
        ),
        (
            "uvicorn",
            ["demo"],
            "observer demo: observer demo needs the 'uvicorn' package, which is not installed; "
            "install it with: pip install 'pool-observer[demo]'",
        ),
        (
            "aiosqlite",
            ["demo"],
            "observer demo: observer demo needs the 'aiosqlite' package, which is not "
            "installed; install it with: pip install 'pool-observer[demo]'",
        ),
        (
            "asyncpg",
            ["demo", "--database-url", "postgresql+asyncpg://app@db/app"],
            "observer demo: observer demo needs the 'asyncpg' package, which is not installed; "
            "install it with: pip install 'pool-observer[demo]'",
        ),
    ],
)
def test_a_missing_extra_is_named_with_the_install_command(
    missing: str,
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A subcommand whose optional dependency is absent exits 2 with the extra to install."""
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` fail
    monkeypatch.delenv("OBSERVER_DEMO_DATABASE_URL", raising=False)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message


def test_the_sidecar_without_a_database_does_not_need_asyncpg(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Serving the workers' metrics only needs no database driver."""
    from observer._extras import check_command

    monkeypatch.setitem(sys.modules, "asyncpg", None)
    for name in ("OBSERVER_SIDECAR_DATABASE_URL", "OBSERVER_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)

    class Args:
        database_url = None

    check_command("sidecar", Args())  # type: ignore[arg-type]


def test_render_without_pyyaml_names_the_monitoring_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from observer._extras import MissingDependency, check_command

    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(MissingDependency, match=r"pip install 'pool-observer\[monitoring\]'"):
        check_command("render", object())  # type: ignore[arg-type]
