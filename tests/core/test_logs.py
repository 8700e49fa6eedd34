"""Structured log events: stable names and fields, request and trace ids, rate limits, and
never a password or an SQL parameter in the output."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from structlog.testing import capture_logs

import observer
from observer._logs import RedactSecrets, scrub
from tests.helpers import PG_HOST, PG_PORT, PG_USER, sample
from tests.helpers.terminate import terminate_backend

pytestmark = pytest.mark.postgres

PASSWORD = "S3cretPW-observer"  # the server trusts 127.0.0.1, so any password connects
SECRET_VALUE = "ssn-123-45-6789"


def client(app: Any, **kwargs: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, **kwargs)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """configure_logging() into a buffer; structlog's defaults are restored afterwards."""
    buffer = io.StringIO()
    observer.configure_logging(level="debug", stream=buffer)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()


@pytest.fixture
def password_url(pg_database: str) -> str:
    return f"postgresql+asyncpg://{PG_USER}:{PASSWORD}@{PG_HOST}:{PG_PORT}/{pg_database}"


async def test_json_logs_never_carry_a_password_or_a_parameter(
    json_logs: io.StringIO, password_url: str, registry: CollectorRegistry
) -> None:
    """An engine whose URL has a password, a query that fails on a secret parameter value, the
    app logging the exception with the DSN and parameters in locals and fields: the JSON output
    has the events, the exception type and the request id, and neither the password nor the
    value."""
    engine = create_async_engine(password_url, pool_size=2, max_overflow=0)
    Session = async_sessionmaker(engine)
    app = FastAPI()
    app_log = structlog.get_logger("app")

    @app.get("/lookup")
    async def lookup() -> int:
        dsn_password = PASSWORD  # a local: show_locals would print it
        params = {"v": SECRET_VALUE}
        async with Session() as session:
            try:
                await session.execute(text("SELECT CAST(:v AS integer) + 1"), params)
            except Exception:
                app_log.exception("lookup.failed", dsn=password_url, params=params)
                assert dsn_password
                raise
        return 0  # pragma: no cover

    obs = observer.instrument(app, engine, registry=registry, metrics_path=None, log_requests=True)
    try:
        async with client(app, raise_app_exceptions=False) as http:
            response = await http.get("/lookup", headers={"x-request-id": "req-secret"})
        obs.flush()
    finally:
        obs.close()
        await engine.dispose()
    assert response.status_code == 500
    output = json_logs.getvalue()
    assert PASSWORD not in output
    assert SECRET_VALUE not in output
    assert "ssn-" not in output
    lines = [json.loads(line) for line in output.splitlines()]
    failed = next(line for line in lines if line["event"] == "lookup.failed")
    assert failed["dsn"] == "[REDACTED]"
    assert failed["params"] == "[REDACTED]"
    assert failed["exception"][0]["exc_type"] == "DBAPIError"
    assert "locals" not in json.dumps(failed["exception"])
    end = next(line for line in lines if line["event"] == "request.end")
    # the 500 is sent by Starlette's ServerErrorMiddleware, outside ours: no status, the error
    assert (end["route"], end["request_id"], end["status"], end["error"]) == (
        "/lookup",
        "req-secret",
        None,
        "DBAPIError",
    )
    assert end["level"] == "info"


async def test_checkout_timeout_and_slow_checkout_carry_pool_state_request_and_trace(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """Inside a span, a request that waits 0.3 s for the only connection logs
    pool.slow_checkout, and one that gives up after pool_timeout logs pool.checkout_timeout:
    both with route, request id, the span's trace and span ids, and total/active/idle/waiting."""
    engine = make_engine(pool_size=1, max_overflow=0, pool_timeout=0.5)
    Session = async_sessionmaker(engine)
    app = FastAPI()
    release = asyncio.Event()

    @app.get("/hold")
    async def hold() -> int:
        async with Session() as session:
            await session.execute(text("SELECT 1"))
            await release.wait()
        return 1

    @app.get("/wait/{n}")
    async def wait(n: int) -> int:
        async with Session() as session:
            await session.execute(text("SELECT 1"))
        return n

    obs = observer.instrument(
        app, engine, registry=registry, metrics_path=None, slow_checkout_seconds=0.2
    )
    tracer = TracerProvider().get_tracer("test")
    try:
        async with client(app, raise_app_exceptions=False) as http:
            with capture_logs() as logs:
                holder = asyncio.create_task(http.get("/hold"))
                await asyncio.sleep(0.1)
                with tracer.start_as_current_span("timeout") as span_timeout:
                    timed_out = await http.get("/wait/1", headers={"x-request-id": "t-1"})
                later = asyncio.get_running_loop().call_later(0.3, release.set)
                with tracer.start_as_current_span("slow") as span_slow:
                    slow = await http.get("/wait/2", headers={"x-request-id": "s-2"})
                await holder
                later.cancel()
    finally:
        obs.close()
    assert timed_out.status_code == 500
    assert slow.status_code == 200
    [timeout] = [e for e in logs if e["event"] == "pool.checkout_timeout"]
    ctx = span_timeout.get_span_context()
    assert timeout["log_level"] == "warning"
    assert timeout["route"] == "/wait/{n}"
    assert timeout["request_id"] == "t-1"
    assert timeout["trace_id"] == format(ctx.trace_id, "032x")
    assert timeout["span_id"] == format(ctx.span_id, "016x")
    assert (timeout["total"], timeout["active"], timeout["idle"], timeout["waiting"]) == (
        1,
        1,
        0,
        0,
    )
    assert (timeout["size"], timeout["max_connections"]) == (1, 1)
    assert timeout["waited_seconds"] >= 0.5
    slow_events = [e for e in logs if e["event"] == "pool.slow_checkout"]
    assert [e["request_id"] for e in slow_events] == ["s-2"]
    [slow_event] = slow_events
    assert slow_event["route"] == "/wait/{n}"
    assert slow_event["threshold_seconds"] == 0.2
    assert slow_event["waited_seconds"] >= 0.2
    assert slow_event["trace_id"] == format(span_slow.get_span_context().trace_id, "032x")
    assert slow_event["active"] == 1


async def test_a_leak_storm_is_logged_at_most_burst_times_and_the_rest_in_a_summary(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """Fifteen leaking requests (grace 0: checked when the app returns): the counter says 15,
    the log has 10 session.leak lines (the rate limiter's burst) and, once the observer
    flushes, one session.leak_summary line counting the other 5: the log adds up to 15."""
    engine = make_engine(pool_size=20, max_overflow=0)
    Session = async_sessionmaker(engine)
    kept: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        session = Session()
        kept.append(session)
        await session.execute(text("SELECT 1"))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    obs = observer.Observer(registry=registry, metrics_path=None, request_end_grace_seconds=0)
    obs.watch(engine)
    try:
        with capture_logs() as logs:
            async with client(obs.middleware(app)) as http:
                for _ in range(15):
                    await http.get("/")
            obs.flush()  # what the sweeper does every tick
        for session in kept:
            await session.close()
    finally:
        obs.close()
    assert (
        sample(
            registry, "sqlalchemy_orm_session_leaks_total", reason="request_end", route="unmatched"
        )
        == 15.0
    )
    assert len([e for e in logs if e["event"] == "session.leak"]) == 10
    [summary] = [e for e in logs if e["event"] == "session.leak_summary"]
    assert (summary["count"], summary["reason"], summary["route"]) == (
        5,
        "request_end",
        "unmatched",
    )
    first = app.__code__.co_firstlineno  # the session is created one line below, used three
    assert summary["origin"] == f"tests/core/test_logs.py:{first + 3} in app"
    assert summary["created_at"] == f"tests/core/test_logs.py:{first + 1} in app"


async def test_terminated_backend_logs_connection_invalidated_with_the_error_class(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """A backend killed by the server: pool.connection_invalidated names the error class and
    the route of the request that held the connection, never the driver's message. (The kill
    returns once the client has seen the backend end: tests/helpers/terminate.py.)"""
    engine = make_engine(pool_size=2, max_overflow=0)
    app = FastAPI()

    @app.get("/victim")
    async def victim() -> int:
        async with engine.connect() as conn:
            await terminate_backend(engine, conn)
            await conn.execute(text("SELECT 1"))
        return 0  # pragma: no cover

    obs = observer.instrument(app, engine, registry=registry, metrics_path=None)
    try:
        async with client(app, raise_app_exceptions=False) as http:
            response = await http.get("/victim", headers={"x-request-id": "kill-1"})
        with capture_logs() as logs:
            obs.flush()
    finally:
        obs.close()
    assert response.status_code == 500
    [event] = [e for e in logs if e["event"] == "pool.connection_invalidated"]
    assert event["log_level"] == "warning"
    assert re.fullmatch(r"[A-Za-z_]\w*", event["error"])
    assert (event["route"], event["request_id"]) == ("/victim", "kill-1")


async def test_engine_per_request_logs_pool_created_after_startup(
    password_url: str, registry: CollectorRegistry, make_engine: Callable[..., AsyncEngine]
) -> None:
    """An endpoint that creates (and disposes) an engine per request: each new pool is logged
    as pool.created_after_startup with the route and a pool name without credentials."""
    watched = make_engine()
    app = FastAPI()

    @app.get("/per-request")
    async def per_request() -> int:
        engine = create_async_engine(password_url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(text("SELECT 1"))).scalar_one())
        finally:
            await engine.dispose()

    obs = observer.instrument(app, watched, registry=registry, metrics_path=None)
    try:
        async with client(app) as http:
            with capture_logs() as logs:
                for _ in range(2):
                    assert (await http.get("/per-request")).json() == 1
    finally:
        obs.close()
    events = [e for e in logs if e["event"] == "pool.created_after_startup"]
    assert len(events) == 2
    assert events[0]["route"] == "/per-request"
    assert events[0]["pool"] == "AsyncAdaptedQueuePool"
    assert re.search(r"tests/core/test_logs\.py:\d+ in per_request$", events[0]["origin"])
    assert PASSWORD not in json.dumps(events)
    assert sample(registry, "sqlalchemy_pools_created_total") == 2.0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
async def test_engine_used_from_a_second_event_loop_logs_loop_mismatch(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """An engine used in one event loop and then in another: the app gets asyncio's
    RuntimeError and the observer logs pool.loop_mismatch once, with a hint."""
    engine = make_engine(pool_size=1, max_overflow=0)
    obs = observer.Observer(registry=registry, metrics_path=None)
    obs.watch(engine)

    async def use() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    errors: list[BaseException] = []

    def other_loop() -> None:
        try:
            asyncio.run(use())
        except BaseException as exc:
            errors.append(exc)

    try:
        await use()
        with capture_logs() as logs:
            thread = threading.Thread(target=other_loop)
            thread.start()
            thread.join(10)
    finally:
        obs.close()
    assert [type(e) for e in errors] == [RuntimeError]
    assert "attached to a different loop" in str(errors[0])
    [event] = [e for e in logs if e["event"] == "pool.loop_mismatch"]
    assert event["log_level"] == "error"
    assert event["error"] == "RuntimeError"
    assert "dispose" in event["hint"]


def test_redact_secrets_processor_masks_keys_urls_and_sql() -> None:
    """Secret-looking keys are replaced; URL passwords, SQL text, SQL parameters and quoted
    bad values are scrubbed from strings, nested ones too."""
    event = RedactSecrets()(
        None,
        "info",
        {
            "event": "x",
            "password": "hunter2",
            "Authorization": "Bearer abc",
            "note": "connect to postgresql://app:hunter2@db:5432/app failed",
            "nested": [{"error": "(DataError) invalid input for query argument $1: 'ssn-1'"}],
            "pool": "postgresql://db:5432/app",
            "count": 3,
        },
    )
    assert event == {
        "event": "x",
        "password": "[REDACTED]",
        "Authorization": "[REDACTED]",
        "note": "connect to postgresql://app:***@db:5432/app failed",
        "nested": [{"error": "(DataError) invalid input for query argument $1: REDACTED"}],
        "pool": "postgresql://db:5432/app",
        "count": 3,
    }
    assert (
        scrub("boom\n[SQL: SELECT * FROM t WHERE ssn = 'x']\n[parameters: ('ssn-1',)]\n(more)")
        == "boom\n[SQL: REDACTED]\n[parameters: REDACTED]\n(more)"
    )


# -- PostgreSQL's own errors: the values they quote ------------------------------------------

FORMS = {
    # name: (statement, parameters, planted secret, what the scrubbed exception text shows)
    "not null": (
        "INSERT INTO {t} (secret, n) VALUES (:s, NULL)",
        {"s": "NOTNULL-SECRET\n) more"},
        "NOTNULL-SECRET",
        "DETAIL:  Failing row contains (REDACTED)",
    ),
    "enum": (
        "INSERT INTO {t} (n, m) VALUES (1, :s)",
        {"s": 'ENUM-SECRET" quoted'},
        "ENUM-SECRET",
        "invalid input value for enum {t}_mood: REDACTED",
    ),
    "json token": (
        "INSERT INTO {t} (n, j) VALUES (1, :s)",
        {"s": "JSONSECRET42"},
        "JSONSECRET42",
        'DETAIL:  Token "REDACTED" is invalid.',
    ),
    "unique key": (
        "INSERT INTO {t} (n, u) VALUES (1, :s)",
        {"s": "a)b KEY-SECRET"},
        "KEY-SECRET",
        "DETAIL:  Key (u)=(REDACTED) already exists.",
    ),
    "sql with ] at a line end": (
        "SELECT ARRAY[1]\n, 'SQL-SECRET' AS s FROM {t} WHERE no_such_column",
        {},
        "SQL-SECRET",
        "[SQL: REDACTED]\n(Background on this error at: ",
    ),
}


@pytest.mark.parametrize("form", list(FORMS))
async def test_postgres_errors_lose_the_values_they_quote(
    form: str, json_logs: io.StringIO, pg_url: str
) -> None:
    """A real asyncpg error from the real PostgreSQL, logged by the app with its traceback
    through configure_logging(): the planted value is in the exception (checked) and in no
    output line, where the scrubbed form of PostgreSQL's or SQLAlchemy's text shows instead."""
    statement, params, secret, shown = FORMS[form]
    table = f"t_{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(pg_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f"CREATE TYPE {table}_mood AS ENUM ('ok')"))
            await conn.execute(
                text(
                    f"CREATE TABLE {table} (secret text, n int NOT NULL, u text UNIQUE, "
                    f"m {table}_mood, j json)"
                )
            )
            if form == "unique key":
                await conn.execute(text(f"INSERT INTO {table} (n, u) VALUES (0, :s)"), params)
        raised = None
        try:
            async with engine.begin() as conn:
                await conn.execute(text(statement.format(t=table)), params)
        except Exception as exc:
            raised = exc
            structlog.get_logger("app").exception("db.failed", table=table)
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {table}"))
            await conn.execute(text(f"DROP TYPE {table}_mood"))
    finally:
        await engine.dispose()
    assert raised is not None
    chain = f"{raised}\n{raised.__cause__}\n{raised.__cause__.__cause__}"
    assert secret in chain  # planted where the form puts it
    output = json_logs.getvalue()
    assert secret not in output
    [line] = [json.loads(line) for line in output.splitlines()]
    values = "\n".join(exc["exc_value"] for exc in line["exception"])
    assert shown.format(t=table) in values


def test_scrub_ends_a_quoted_value_where_postgres_ends_it_not_at_a_quote_or_bracket() -> None:
    """Values holding the characters that used to end them early (quotes, ")", "]", line
    breaks), psycopg's CONTEXT lines, expression keys, exclusion conflicts and a message
    embedded in a longer line: nothing of the value survives, the rest of the text does."""
    cases = {
        "x\nDETAIL:  Failing row contains (1, S3C\n), null).\nHINT:  h": (
            "x\nDETAIL:  Failing row contains (REDACTED)\nHINT:  h"
        ),
        'invalid input value for enum mood: "S3C" x"\nCONTEXT:  c': (
            "invalid input value for enum mood: REDACTED\nCONTEXT:  c"
        ),
        'retrying after: invalid input syntax for type integer: "S3C"; giving up': (
            "retrying after: invalid input syntax for type integer: REDACTED"
        ),
        'DETAIL:  Token "S3C" is invalid.\nCONTEXT:  JSON data, line 1: S3C...': (
            'DETAIL:  Token "REDACTED" is invalid.\nCONTEXT:  JSON data, line 1: REDACTED'
        ),
        "CONTEXT:  unnamed portal parameter $1 = 'S3C'": (
            "CONTEXT:  unnamed portal parameter $1 = REDACTED"
        ),
        "DETAIL:  Key (lower(email))=(a)b\nS3C) already exists.\n[SQL: INSERT]": (
            "DETAIL:  Key (lower(email))=(REDACTED)\n[SQL: REDACTED]"
        ),
        "Key (r)=([1,2)) conflicts with existing key (r)=([S3C,3)).": (
            "Key (r)=(REDACTED) conflicts with existing key (r)=(REDACTED)"
        ),
        "boom\n[SQL: SELECT a[1]\n, 'S3C']\n[parameters: ('S3C',)]\n(Background on this error": (
            "boom\n[SQL: REDACTED]\n[parameters: REDACTED]\n(Background on this error"
        ),
        "[SQL: SELECT a[1]\n, 'S3C'": "[SQL: REDACTED]",
    }
    assert {text: scrub(text) for text in cases} == cases


@pytest.fixture
def unconfigured_structlog() -> Iterator[None]:
    """structlog as in an app that never configured it (other tests' capture_logs did)."""
    structlog.reset_defaults()
    try:
        yield
    finally:
        structlog.reset_defaults()


async def _one_too_old_leak(make_engine: Callable[..., AsyncEngine], obs: observer.Observer) -> int:
    """Leak one session past leak_threshold_seconds, then close it; the line that began it."""
    engine = make_engine(pool_size=2)
    obs.watch(engine)
    session = async_sessionmaker(engine)()
    line = _one_too_old_leak.__code__.co_firstlineno + 6
    await session.execute(text("SELECT 1"))
    await asyncio.sleep(0.06)
    obs.sessions.check_age()
    await session.close()
    return line


@pytest.mark.usefixtures("unconfigured_structlog")
async def test_by_default_events_are_records_of_the_standard_library_logging(
    make_engine: Callable[..., AsyncEngine],
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With structlog left unconfigured, a leak is a WARNING record of logger observer.sessions:
    its message is the event and its fields as key=value (None left out), and each field is a
    record attribute too; closing the session later is an INFO record saying how."""
    obs = observer.Observer(registry=registry, metrics_path=None, leak_threshold_seconds=0.05)
    try:
        with caplog.at_level(logging.INFO, logger="observer"):
            line = await _one_too_old_leak(make_engine, obs)
    finally:
        obs.close()
    origin = f"tests/core/test_logs.py:{line} in _one_too_old_leak"
    created = f"tests/core/test_logs.py:{line - 2} in _one_too_old_leak"  # session = ...()
    records = [r for r in caplog.records if r.name.startswith("observer")]
    assert [(r.name, r.levelno, r.event) for r in records] == [  # type: ignore[attr-defined]
        ("observer.sessions", logging.WARNING, "session.leak"),
        ("observer.sessions", logging.INFO, "session.released_after_leak"),
    ]
    leak, released = records
    age = leak.age_seconds  # type: ignore[attr-defined]
    assert leak.getMessage() == (
        f'session.leak reason=too_old age_seconds={age} route=none origin="{origin}" '
        f'created_at="{created}" hint="{leak.hint}"'  # type: ignore[attr-defined]
    )
    assert (leak.reason, leak.route, leak.origin, leak.request_id) == (  # type: ignore[attr-defined]
        "too_old",
        "none",
        origin,
        None,
    )
    assert released.how == "closed"  # type: ignore[attr-defined]


@pytest.mark.usefixtures("unconfigured_structlog")
async def test_the_apps_logging_config_formats_and_filters_the_events(
    make_engine: Callable[..., AsyncEngine], registry: CollectorRegistry
) -> None:
    """A dictConfig like docs/logging.md's uvicorn log_config: the app's formatter writes the
    leak as its own line format; raising the "observer" logger to ERROR silences the events."""
    stream = io.StringIO()
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"app": {"format": "%(levelname)s [%(name)s] %(message)s"}},
        "handlers": {
            "app": {"class": "logging.StreamHandler", "formatter": "app", "stream": stream}
        },
        "loggers": {"observer": {"handlers": ["app"], "level": "INFO", "propagate": False}},
    }
    logging.config.dictConfig(config)
    obs = observer.Observer(registry=registry, metrics_path=None, leak_threshold_seconds=0.05)
    try:
        line = await _one_too_old_leak(make_engine, obs)
        logging.getLogger("observer").setLevel(logging.ERROR)
        await _one_too_old_leak(make_engine, obs)  # silenced
    finally:
        obs.close()
        logging.getLogger("observer").handlers.clear()
        logging.getLogger("observer").setLevel(logging.NOTSET)
        logging.getLogger("observer").propagate = True
    lines = stream.getvalue().splitlines()
    assert [text.split(" age_seconds=")[0] for text in lines] == [
        "WARNING [observer.sessions] session.leak reason=too_old",
        "INFO [observer.sessions] session.released_after_leak reason=too_old how=closed",
    ]
    assert f'origin="tests/core/test_logs.py:{line} in _one_too_old_leak"' in lines[0]


def test_configure_logging_console_is_the_opt_in_readable_output() -> None:
    """configure_logging(renderer="console") writes structlog's console lines to the stream."""
    buffer = io.StringIO()
    observer.configure_logging(stream=buffer, renderer="console")
    try:
        observer._logs.emit("warning", "session.leak", None, reason="too_old")
    finally:
        structlog.reset_defaults()
    [line] = buffer.getvalue().splitlines()
    assert "[warning  ] session.leak" in line
    assert "reason=too_old" in line
    with pytest.raises(observer.ConfigurationError, match="renderer must be 'json' or 'console'"):
        observer.configure_logging(renderer="xml")  # type: ignore[arg-type]
