"""End to end: a password planted in every form of DSN never comes out of any surface, the
real commands and endpoints included: doctor (text, JSON, failing checks), the sidecar (logs,
/metrics, an unreachable database), /metrics, snapshot(), the live page and its JSON, and the
library's log events."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx
import pytest
import sqlalchemy.exc
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import create_async_engine
from structlog.testing import capture_logs

import observer
from tests.helpers import PG_HOST, PG_PORT, admin
from tests.helpers.processes import free_port

pytestmark = pytest.mark.postgres

ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OBSERVER_", "PROMETHEUS_"))}


def piece() -> str:
    """A random, recognisable piece of a secret."""
    return "SX" + secrets.token_hex(8).upper()


@dataclass(frozen=True)
class Form:
    """One way of writing the DSN, with the pieces of secret planted in it."""

    name: str
    dsn: str
    pieces: tuple[str, ...]
    connects: bool  # whether SQLAlchemy and asyncpg can log in with it as written
    shown: str  # how labels and logs show it
    url: bool = True  # whether SQLAlchemy reads it at all

    def leaks(self, text: str) -> list[str]:
        return [p for p in self.pieces if p in text]


@pytest.fixture(scope="module")
def role(pg_database: str) -> Iterator[tuple[str, str]]:
    """A login role with a password (the server trusts 127.0.0.1: any password logs in, which
    is enough to check where the password goes), and the database it may use."""
    name, password = f"observer_e2e_{secrets.token_hex(4)}", piece()
    asyncio.run(admin(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'"))
    asyncio.run(admin(f'GRANT ALL ON DATABASE "{pg_database}" TO {name}'))
    try:
        yield name, pg_database
    finally:
        asyncio.run(admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          f"WHERE usename = '{name}'"))  # fmt: skip
        asyncio.run(admin(f'REVOKE ALL ON DATABASE "{pg_database}" FROM {name}'))
        asyncio.run(admin(f"DROP ROLE IF EXISTS {name}"))


def forms(user: str, db: str, port: int = PG_PORT) -> list[Form]:
    """Every form of DSN, each with fresh secrets."""
    at = f"{PG_HOST}:{port}/{db}"
    shown, unparsed = f"postgresql://{at}", "postgresql://<unparsed>"
    p = [piece() for _ in range(9)]
    special = f"{p[1]}@:/?#%{p[2]}"
    nowhere = free_port()
    return [
        Form("userinfo", f"postgresql://{user}:{p[0]}@{at}", (p[0],), True, shown),
        Form(
            "percent-encoded",
            f"postgresql://{user}:{quote(special, safe='')}@{at}",
            (p[1], p[2]),
            True,
            shown,
        ),
        Form("query password", f"postgresql://{user}@{at}?password={p[3]}", (p[3],), True, shown),
        # asyncpg has no such keyword: the connection fails with SQLAlchemy's text
        Form(
            "query sslpassword",
            f"postgresql://{user}@{at}?sslpassword={p[4]}",
            (p[4],),
            False,
            shown,
        ),
        # the break: SQLAlchemy splits at the first "@" and keeps "<rest>@host" as host
        Form(
            "unescaped @", f"postgresql://{user}:{p[5]}@{p[6]}@{at}", (p[5], p[6]), False, unparsed
        ),
        Form(
            "libpq",
            f"host={PG_HOST} port={port} dbname={db} user={user} password={p[7]}",
            (p[7],),
            False,
            shown,
            url=False,
        ),
        Form(
            "unreachable",
            f"postgresql://{user}:{p[8]}@{PG_HOST}:{nowhere}/{db}",
            (p[8],),
            False,
            f"postgresql://{PG_HOST}:{nowhere}/{db}",
        ),
    ]


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "observer.cli", *argv]
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_doctor_never_prints_a_planted_password(role: tuple[str, str]) -> None:
    """``observer doctor URL``, as text and ``--json``, checking or failing to check (the
    driver's error included), shows no piece of the password in any form of DSN."""
    cases = [(form, extra) for form in forms(*role) for extra in ([], ["--json"])]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: run("doctor", c[0].dsn, "--connect-timeout", "3",
                                              *c[1]), cases))  # fmt: skip
    for (form, extra), result in zip(cases, results, strict=True):
        output = result.stdout + result.stderr
        assert form.leaks(output) == [], (form.name, extra, output)
        expected_code = {True: {0, 1}, False: {2}}[form.connects]
        assert result.returncode in expected_code, (form.name, output)
        if extra and form.url and form.name != "unescaped @":  # a usage error: no JSON
            shown = json.loads(result.stdout)["url"]
            assert shown.startswith("postgresql://"), (form.name, shown)
        if not form.connects and form.url and form.name != "unescaped @":
            assert "observer doctor: could not check postgresql://" in result.stderr, output
    by_name = {f.name: r for (f, extra), r in zip(cases, results, strict=True) if not extra}
    for name in ("userinfo", "percent-encoded", "query password"):
        shown = f"postgresql://{role[0]}@{PG_HOST}:{PG_PORT}/{role[1]}"  # with the user
        assert by_name[name].stdout.startswith(f"pool-observer doctor: {shown}\n"), name
    # refused before any connection: its host is not a host name (the rest of the password)
    assert by_name["unescaped @"].stderr == (
        "observer doctor: DATABASE_URL has a host that is not a host name or IP address; "
        "expected postgresql://user:password@host:port/database\n"
    )
    assert by_name["libpq"].stderr == (
        "observer doctor: DATABASE_URL is not a URL; "
        "expected postgresql://user:password@host:port/database\n"
    )


def sidecar(form: Form, tmp_path: Path, *options: str) -> tuple[int, str, str]:
    """Start ``observer sidecar`` on ``form``, scrape /metrics once it has polled, stop it:
    (exit code, its log, the scrape)."""
    port = free_port()
    command = [sys.executable, "-m", "observer.cli", "sidecar", "--port", str(port),
               "--poll-interval", "0.2", *options]  # fmt: skip
    process = subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE, text=True)
    body = ""
    try:
        deadline = time.monotonic() + 20
        while process.poll() is None and not re.search(
            r"^pg_observer_polls_total [1-9]", body, re.M
        ):
            assert time.monotonic() < deadline, f"{form.name}: no poll in 20 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(0.1)
        if process.poll() is None:
            time.sleep(0.5)  # a few polls more: the outage is logged after the first
            process.send_signal(signal.SIGTERM)
        _, log = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, log, body


def test_sidecar_never_logs_or_serves_a_planted_password(
    role: tuple[str, str], tmp_path: Path
) -> None:
    """``observer sidecar --database-url URL`` (and ``--database-url-file``): its startup log,
    its "database unreachable" log, /metrics and a refused URL carry no piece of the password."""
    cases = [(form, ("--database-url", form.dsn)) for form in forms(*role)]
    in_file = forms(*role)[0]
    path = tmp_path / "database-url"
    path.write_text(in_file.dsn + "\n")
    cases.append((in_file, ("--database-url-file", str(path))))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: sidecar(c[0], tmp_path, *c[1]), cases))
    for (form, options), (code, log, body) in zip(cases, results, strict=True):
        assert form.leaks(log + body) == [], (form.name, options, log)
        if not form.url:
            assert (code, body) == (2, ""), (form.name, log)
            assert "is not a URL" in log
            continue
        if form.name == "unescaped @":  # refused at startup: its host is part of the password
            assert (code, body) == (2, ""), (form.name, log)
            assert "has a host that is not a host name or IP address" in log, log
            continue
        assert code == 0, (form.name, log)
        assert "serving /metrics and /healthz" in log
        up = "pg_up 1.0" in body
        assert up is form.connects, (form.name, body)
        if not form.connects:
            assert "database unreachable from the sidecar: " in log, (form.name, log)
    by_name = {f.name + o[0]: r for (f, o), r in zip(cases, results, strict=True)}
    assert (
        f"(database: postgresql://{PG_HOST}:{PG_PORT}/{role[1]}, "
        in (by_name["userinfo--database-url-file"][1])
    )


async def test_library_surfaces_never_show_a_planted_password(role: tuple[str, str]) -> None:
    """For every DSN form SQLAlchemy reads, an instrumented app's /metrics, snapshot(), the
    live page and its JSON, and the log events (a checkout timeout names the pool) carry no
    piece of the password; the pool label is the location, or <unparsed>."""
    user, db = role
    for form in [f for f in forms(user, db) if f.url]:

        async def connect() -> asyncpg.Connection:
            # the real login, whatever the URL says: every form gets a working pool
            return await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=user, database=db)

        engine = create_async_engine(
            form.dsn.replace("postgresql://", "postgresql+asyncpg://", 1),
            async_creator=connect, pool_size=1, max_overflow=0, pool_timeout=0.1,
        )  # fmt: skip
        app = FastAPI()
        obs = observer.instrument(app, engine, registry=CollectorRegistry(),
                                  live_page_path="/observer")  # fmt: skip
        try:
            with capture_logs() as logs:
                async with engine.connect():
                    with pytest.raises(sqlalchemy.exc.TimeoutError):
                        async with engine.connect():
                            pass
            events = json.dumps(logs, default=str)
            snapshot = json.dumps(obs.snapshot(), default=str)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                pages = [(await client.get(p)) for p in
                         ("/metrics", "/observer", "/observer/snapshot.json")]  # fmt: skip
        finally:
            obs.close()
            await engine.dispose()
        assert [r.status_code for r in pages] == [200, 200, 200]
        texts = [events, snapshot, *(r.text for r in pages)]
        assert [form.leaks(t) for t in texts] == [[]] * 5, form.name
        labels = [e["pool"] for e in logs if e["event"] == "pool.checkout_timeout"]
        assert labels == [form.shown], form.name
        assert f'pool="{form.shown}"' in pages[0].text
        assert f'"name": "{form.shown}"' in snapshot
