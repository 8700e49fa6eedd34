"""Security and privacy: no secret in any output, a metrics endpoint that can be locked down,
and label values that user input cannot inflate or inject into."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import observer
from observer import ConfigurationError, Observer, Settings
from tests.helpers import admin

TOKEN = "t0ken-" + uuid.uuid4().hex
SECRET_PARAM = "ssn-123-45-6789"


async def _get(app: Any, path: str, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        return await client.get(path, headers=headers)


# -- the metrics endpoint -----------------------------------------------------------------


async def test_metrics_path_requires_the_bearer_token() -> None:
    """With ``metrics_token``, ``GET /metrics`` without it (or with a wrong one, or another
    scheme) is a 401 with ``WWW-Authenticate: Bearer``; with it, the metrics."""
    app = FastAPI()
    observer.instrument(app, registry=CollectorRegistry(), metrics_token=TOKEN).close()
    missing = await _get(app, "/metrics")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="metrics"'
    assert TOKEN not in missing.text
    assert (await _get(app, "/metrics", authorization="Bearer nope")).status_code == 401
    assert (await _get(app, "/metrics", authorization=f"Basic {TOKEN}")).status_code == 401
    assert (await _get(app, "/metrics", authorization=f"Bearer {TOKEN}x")).status_code == 401
    ok = await _get(app, "/metrics", authorization=f"Bearer {TOKEN}")
    assert ok.status_code == 200
    assert "observer_hook_errors_total" in ok.text or "observer_hook_errors" in ok.text


def _http(url: str, **headers: str) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


@pytest.fixture
def port_observer() -> Iterator[Observer]:
    obs = Observer(registry=CollectorRegistry(), metrics_port=0, metrics_token=TOKEN)
    yield obs
    obs.close()


def test_metrics_port_serves_on_localhost_with_the_token(port_observer: Observer) -> None:
    """``metrics_port`` serves /metrics from a thread on 127.0.0.1 (by default), asks for the
    token, answers 404 elsewhere, and releases the port on ``close()``."""
    server = port_observer.metrics_server
    assert server is not None
    url = f"http://127.0.0.1:{server.port}"
    status, headers, _ = _http(url + "/metrics")
    assert status == 401
    assert headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    status, headers, body = _http(url + "/metrics", Authorization=f"Bearer {TOKEN}")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert "# TYPE sqlalchemy_pool_checkouts_total counter" in body
    assert _http(url + "/admin", Authorization=f"Bearer {TOKEN}")[0] == 404
    assert server._server.server_address[0] == "127.0.0.1"
    port_observer.close()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0


def test_metrics_port_in_use_is_a_configuration_error(port_observer: Observer) -> None:
    """A second observer on the same port fails at construction, naming the option."""
    assert port_observer.metrics_server is not None
    taken = port_observer.metrics_server.port
    with pytest.raises(ConfigurationError, match=rf"metrics_port {taken} on 127.0.0.1 cannot be"):
        Observer(registry=CollectorRegistry(), metrics_port=taken)


def test_the_token_is_not_in_the_settings_repr() -> None:
    """The token never shows in ``repr(settings)`` (nor in errors that print settings)."""
    settings = Settings.from_options({"metrics_token": TOKEN}, environ={})
    assert settings.metrics_token == TOKEN
    assert TOKEN not in repr(settings)
    env = Settings.from_options({}, environ={"OBSERVER_METRICS_TOKEN": TOKEN})
    assert env.metrics_token == TOKEN


# -- secrets in outputs -------------------------------------------------------------------


@pytest.fixture
async def secret_url(pg_url: str) -> AsyncIterator[tuple[str, str]]:
    """A URL for a PostgreSQL role that has a password (the password is in the URL)."""
    role = f"observer_secret_{uuid.uuid4().hex[:8]}"
    password = f"Pw-{uuid.uuid4().hex}"
    await admin(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    url = make_url(pg_url)
    await admin(f'GRANT ALL ON DATABASE "{url.database}" TO {role}')
    try:
        yield url.set(username=role, password=password).render_as_string(False), password
    finally:
        await admin(f'REVOKE ALL ON DATABASE "{url.database}" FROM {role}')
        await admin(f"DROP ROLE IF EXISTS {role}")


@pytest.mark.postgres
@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_no_password_or_sql_parameter_in_any_output(
    secret_url: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """With a password in the URL, and a driver error carrying a parameter's value: neither
    appears in /metrics, the observer's logs, snapshot(), nor the errors the observer raises."""
    url, password = secret_url
    assert password in url
    engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    Session = async_sessionmaker(engine)
    app = FastAPI()

    @app.get("/ok")
    async def ok() -> dict[str, int]:
        async with Session() as session:
            return {"v": (await session.execute(text("SELECT 1"))).scalar_one()}

    @app.get("/bad")
    async def bad() -> dict[str, str]:
        async with Session() as session:
            try:
                await session.execute(text("SELECT CAST(:v AS integer)"), {"v": SECRET_PARAM})
            except Exception as exc:
                return {"error": type(exc).__name__}
        return {}

    @app.get("/hold")
    async def hold() -> dict[str, str]:
        async with Session() as session:
            await session.execute(text("SELECT pg_sleep(0.5)"))
        return {}

    @app.get("/leak")
    async def leak() -> dict[str, str]:
        session = Session()
        await session.execute(text("SELECT 1"))
        return {}

    registry = CollectorRegistry()
    errors: list[str] = []
    with structlog.testing.capture_logs() as logs:
        obs = observer.instrument(app, engine, registry=registry, leak_threshold_seconds=0.1)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                assert (await client.get("/ok")).status_code == 200
                assert (await client.get("/bad")).json() == {"error": "DBAPIError"}
                # the pool of one is held: the second request times out (logged by the observer)
                held = await asyncio.gather(
                    client.get("/hold"), client.get("/hold"), return_exceptions=True
                )
                assert sorted(type(r).__name__ for r in held) == ["Response", "TimeoutError"]
                errors.extend(str(r) for r in held)
                await client.get("/leak")  # the leak is meant (warnings ignored above)
                gc.collect()
                await asyncio.sleep(0.2)
            obs.sessions.check_age()
            for bad_call in (
                lambda: obs.watch(engine, name="other"),
                lambda: obs.watch(object()),
                lambda: Observer(registry=registry),
            ):
                with pytest.raises(ConfigurationError) as error:
                    bad_call()
                errors.append(str(error.value))
            snapshot = json.dumps(obs.snapshot(), default=str)
            metrics = (await _get(app, "/metrics")).text
            pool_names = obs.pool_names
        finally:
            obs.close()
            await engine.dispose()
    captured = capsys.readouterr()
    outputs = {
        "metrics": metrics,
        "logs": repr(logs),
        "snapshot": snapshot,
        "errors": "\n".join(errors),
        "stdout": captured.out + captured.err,
        "pool names": repr(pool_names),
    }
    assert {e["event"] for e in logs} >= {"pool.checkout_timeout", "session.leak"}
    for name, output in outputs.items():
        assert password not in output, name
        assert SECRET_PARAM not in output, name
    parts = make_url(url)
    assert pool_names == [f"postgresql://{parts.host}:{parts.port}/{parts.database}"]


# -- label values from user input -----------------------------------------------------------


async def test_paths_and_headers_do_not_become_label_values() -> None:
    """Unknown paths (however long or odd) are one ``unmatched`` route; request ids and other
    headers never reach a label; the exposition stays parseable."""
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    registry = CollectorRegistry()
    obs = observer.instrument(app, registry=registry, max_routes=3)
    try:
        odd = ['/%22%7D%0Aevil{x="1"}', "/" + "a" * 5000, "/items/" + "b" * 3000, "/ü/\\"]
        headers = {"x-request-id": 'x"}\n' * 1000, "user-agent": 'evil"}'}
        for path in odd:
            await _get(app, path, **headers)
        body = (await _get(app, "/metrics")).text
    finally:
        obs.close()
    routes = {
        sample.labels["route"]
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if "route" in sample.labels
    }
    assert routes <= {"none", "unmatched", "/items/{item_id}", "other"}
    assert "evil" not in body
    assert "aaaa" not in body


def test_workers_of_one_server_share_the_metrics_port() -> None:
    """With share_port (option metrics_port_shared) both servers bind one port with
    SO_REUSEPORT and scrapes are served; tests/metrics/test_metrics_port.py has the refusals."""
    from observer.metrics._server import MetricsServer

    first = MetricsServer(
        CollectorRegistry(), host="127.0.0.1", port=0, token=None, share_port=True
    )
    try:
        second = MetricsServer(
            CollectorRegistry(), host="127.0.0.1", port=first.port, token=None, share_port=True
        )
        try:
            assert _http(f"http://127.0.0.1:{first.port}/metrics")[0] == 200
        finally:
            second.close()
    finally:
        first.close()


# -- never raise where the app calls in ------------------------------------------------------


class BrokenStream:
    """A log stream whose every write fails (a closed pipe, a full disk)."""

    def write(self, text: str) -> int:
        raise OSError("the log sink is gone")

    def flush(self) -> None:
        raise OSError("the log sink is gone")


def _raising_processor(logger: Any, method: str, event: Any) -> Any:
    raise RuntimeError("a structlog processor failed")


@pytest.fixture(params=["processor", "stream"])
def failing_log_sink(request: pytest.FixtureRequest) -> Iterator[str]:
    """structlog configured so that every log call raises: a processor or the stream fails."""
    if request.param == "processor":
        structlog.configure(processors=[_raising_processor])
    else:
        observer.configure_logging(stream=BrokenStream())  # type: ignore[arg-type]
    try:
        yield request.param
    finally:
        structlog.reset_defaults()


def hook_errors(registry: CollectorRegistry) -> dict[str, float]:
    """hook label -> observer_hook_errors_total, for the hooks that failed at least once."""
    return {
        sample.labels["hook"]: sample.value
        for metric in registry.collect()
        if metric.name == "observer_hook_errors"
        for sample in metric.samples
        if sample.name == "observer_hook_errors_total" and sample.value
    }


def test_a_failing_log_sink_never_escapes_flush_or_snapshot(failing_log_sink: str) -> None:
    """With every log call raising, a hook error (deferred, as hooks report them) is counted
    by ``flush()`` and ``snapshot()``, which return normally; the failed log line is counted
    as ``hook="log"`` and nothing recurses."""
    registry = CollectorRegistry()
    obs = Observer(registry=registry, metrics_path=None)
    try:
        obs.hooks.failed("checkout", RuntimeError("a bug in a hook"))
        obs.flush()
        assert hook_errors(registry) == {"checkout": 1.0, "log": 1.0}
        obs.hooks.failed("checkin", RuntimeError("another one"))
        snapshot = obs.snapshot()
        assert snapshot == {
            "pools": [],
            "live_pools": 0,
            "sessions": [],
            "leaks": [],
            "connections": [],
        }
        assert hook_errors(registry) == {"checkout": 1.0, "checkin": 1.0, "log": 2.0}
    finally:
        obs.close()


def test_drain_reports_a_failing_report_once_and_goes_on() -> None:
    """A deferred item that raises is counted under ``drain``; a failing report (its counter
    raising) is not reported again, and the items after it still run."""
    from observer._hooks import Hooks

    registry = CollectorRegistry()
    obs = Observer(registry=registry, metrics_path=None)
    hooks: Hooks = obs.hooks
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("deferred work failed")

    try:
        hooks.pending.append((broken,))
        hooks.pending.append((hooks._report, "no such hook", "not an exception"))
        hooks.pending.append((ran.append, "after"))
        hooks.drain()
    finally:
        obs.close()
    assert ran == ["after"]
    assert hook_errors(registry) == {"drain": 1.0, "no such hook": 1.0}


@pytest.mark.postgres
async def test_health_metrics_and_live_json_answer_while_logs_and_pool_state_fail(
    failing_log_sink: str, make_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log sink failing and the pool's state read raising (its ``checkedout``): the app's
    own /health returning ``obs.snapshot()`` answers 200 (no pools: the one pool cannot be
    read), so do /metrics (without that pool's gauges) and the live page's JSON; each failed
    read is counted as ``hook="pool_state"``."""
    engine = make_engine(pool_size=2)
    app = FastAPI()
    registry = CollectorRegistry()

    @app.get("/health")
    async def health() -> Any:
        return obs.snapshot()

    obs = observer.instrument(app, engine, registry=registry, live_page_path="/observer")

    def broken_state() -> int:
        raise RuntimeError("pool internals changed")

    monkeypatch.setattr(engine.sync_engine.pool, "checkedout", broken_state)
    try:
        health = await _get(app, "/health")
        metrics = await _get(app, "/metrics")
        live = await _get(app, "/observer/snapshot.json")
        obs.flush()
        errors = hook_errors(registry)
    finally:
        obs.close()
    empty = {"pools": [], "live_pools": 0, "sessions": [], "leaks": [], "connections": []}
    assert (health.status_code, health.json()) == (200, empty)
    assert (live.status_code, live.json()) == (200, empty)
    assert metrics.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    assert families["sqlalchemy_pool_size"].samples == []
    assert [s.value for s in families["sqlalchemy_pools"].samples] == [0.0]
    assert errors == {"pool_state": 3.0, "log": 1.0}


async def test_a_collector_of_the_apps_own_that_raises_is_a_counted_500() -> None:
    """A collector the app registered raising: /metrics on the app and on metrics_port answer
    500 with a fixed message (no exception into the server, no traceback), counted as
    ``hook="metrics"`` and ``hook="metrics_port"``."""

    class Broken:
        def collect(self) -> Any:
            raise RuntimeError("the app's collector failed")

    registry = CollectorRegistry()
    app = FastAPI()
    obs = observer.instrument(app, registry=registry, metrics_port=0)
    broken = Broken()
    registry.register(broken)  # type: ignore[arg-type]
    try:
        response = await _get(app, "/metrics")
        assert obs.metrics_server is not None
        port_status, _, port_body = _http(f"http://127.0.0.1:{obs.metrics_server.port}/metrics")
        registry.unregister(broken)  # type: ignore[arg-type]
        obs.flush()
        errors = hook_errors(registry)
    finally:
        obs.close()
    assert (response.status_code, response.text) == (500, "the metrics could not be rendered\n")
    assert (port_status, port_body) == (500, "the metrics could not be rendered\n")
    assert errors == {"metrics": 1.0, "metrics_port": 1.0}
