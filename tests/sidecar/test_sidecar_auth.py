"""The sidecar's secrets come from files and fail closed: a bearer token for /metrics
(--metrics-token-file) and the database URL (--database-url-file), with the real process."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from observer.sidecar._config import add_arguments, resolve
from tests.helpers import PG_HOST, PG_PORT, PG_USER
from tests.helpers.processes import free_port

TOKEN = "sidecar-token-" + "0123456789abcdef"
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OBSERVER_", "PROMETHEUS_"))}
COMMAND = [sys.executable, "-m", "observer.cli", "sidecar"]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def get(url: str, **headers: str) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def serve(env: dict[str, str], *argv: str) -> tuple[subprocess.Popen[str], int]:
    """A running ``observer sidecar`` on a free port, once /healthz answers."""
    port = free_port()
    process = subprocess.Popen(
        [*COMMAND, "--port", str(port), *argv], env={**ENV, **env}, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the sidecar did not start"
        try:
            if get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                return process, port
        except OSError:
            time.sleep(0.1)


def stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, log = process.communicate(timeout=15)
    assert process.returncode == 0, log
    return log


@pytest.mark.parametrize("given", ["option", "variable"])
def test_metrics_ask_for_the_token_from_the_file(tmp_path: Path, given: str) -> None:
    """With a token file (option or variable), /metrics answers 401 with a Bearer challenge
    without the token or with a wrong one, 200 with it; /healthz and --check-health stay open;
    the token never appears in the log or a 401 body."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # a trailing newline, as editors and echo leave
    option = ["--metrics-token-file", str(token_file)] if given == "option" else []
    env = {"OBSERVER_SIDECAR_METRICS_TOKEN_FILE": str(token_file)} if given == "variable" else {}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    process, port = serve(env, *option)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        missing = get(url)
        assert (missing[0], missing[1]["WWW-Authenticate"]) == (401, 'Bearer realm="metrics"')
        assert missing[2] == "a bearer token is required (Authorization: Bearer <metrics_token>)\n"
        assert get(url, Authorization=f"Bearer {TOKEN}x")[0] == 401
        assert get(url, Authorization=f"Basic {TOKEN}")[0] == 401
        status, _, body = get(url, Authorization=f"Bearer {TOKEN}")
        assert (status, "observer_sidecar_multiproc_files 0.0" in body) == (200, True)
        assert get(f"http://127.0.0.1:{port}/healthz")[:1] == (200,)
        health = subprocess.run(
            [*COMMAND, "--port", str(port), "--check-health", *option],
            env={**ENV, **env}, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert health.returncode == 0, health.stderr
    finally:
        log = stop(process)
    assert "serving /metrics (bearer token required) and /healthz" in log
    assert TOKEN not in log + missing[2]


def test_without_a_token_file_metrics_are_open(tmp_path: Path) -> None:
    """No token file, no variable: /metrics answers without a token (the documented default)."""
    process, port = serve({"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    try:
        assert get(f"http://127.0.0.1:{port}/metrics")[0] == 200
    finally:
        log = stop(process)
    assert "serving /metrics and /healthz" in log


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "--metrics-token-file / OBSERVER_SIDECAR_METRICS_TOKEN_FILE: cannot read "
                    "'{dir}/nothing-here': No such file or directory"),
        ("empty", "--metrics-token-file / OBSERVER_SIDECAR_METRICS_TOKEN_FILE: '{dir}/token' "
                  "is empty"),
        ("short", "--metrics-token-file / OBSERVER_SIDECAR_METRICS_TOKEN_FILE: the token has 5 "
                  "characters, fewer than 16"),
        ("blank", "--metrics-token-file / OBSERVER_SIDECAR_METRICS_TOKEN_FILE: the token holds "
                  "whitespace, control or non-ASCII characters"),
        ("unset-variable", "--metrics-token-file / OBSERVER_SIDECAR_METRICS_TOKEN_FILE is given "
                           "but empty: name the file, or leave the option out"),
        ("directory", "--metrics-token-file / OBSERVER_SIDECAR_METRICS_TOKEN_FILE: cannot read "
                      "'{dir}': Is a directory"),
        ("misspelled", "unknown environment variable OBSERVER_SIDECAR_METRICS_TOKEN_FIEL; did "
                       "you mean OBSERVER_SIDECAR_METRICS_TOKEN_FILE? (the sidecar reads "),
    ],
)  # fmt: skip
def test_a_token_file_that_cannot_serve_stops_the_sidecar(
    tmp_path: Path, case: str, message: str
) -> None:
    """Missing, empty, too short, blank-holding, named by an empty variable, a directory, or
    the variable misspelled: exit 2 with one line naming the option, never serving open."""
    token_file = tmp_path / "token"
    token_file.write_text({"short": "abcde", "blank": "0123456789 abcdef"}.get(case, ""))
    path = {"missing": tmp_path / "nothing-here", "directory": tmp_path}.get(case, token_file)
    var = "OBSERVER_SIDECAR_METRICS_TOKEN_" + ("FIEL" if case == "misspelled" else "FILE")
    env = {var: "" if case == "unset-variable" else str(path)}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    result = subprocess.run(
        [*COMMAND, "--port", str(free_port())], env={**ENV, **env}, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("observer sidecar: " + message.format(dir=tmp_path))
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.postgres
def test_the_database_url_comes_from_a_file(pg_database: str, tmp_path: Path) -> None:
    """``--database-url-file`` (or its variable): the sidecar polls the URL the file holds
    (pg_up 1), and its password is nowhere in the command line, the environment or the log."""
    password = "file-secret-" + "5f1e0c2a9b"
    url_file = tmp_path / "database-url"
    url_file.write_text(f"postgresql://{PG_USER}:{password}@{PG_HOST}:{PG_PORT}/{pg_database}\n")
    env = {"OBSERVER_SIDECAR_DATABASE_URL_FILE": str(url_file)}
    process, port = serve(env, "--poll-interval", "0.2")
    try:
        deadline = time.monotonic() + 20
        while "pg_up 1.0" not in get(f"http://127.0.0.1:{port}/metrics")[2]:
            assert time.monotonic() < deadline, "pg_up never reached 1"
            time.sleep(0.1)
        with open(f"/proc/{process.pid}/cmdline", "rb") as cmdline:
            assert password.encode() not in cmdline.read()
        with open(f"/proc/{process.pid}/environ", "rb") as environ:
            assert password.encode() not in environ.read()
    finally:
        log = stop(process)
    assert f"(database: postgresql://{PG_HOST}:{PG_PORT}/{pg_database}, " in log
    assert password not in log


def test_database_url_file_fails_closed(tmp_path: Path) -> None:
    """An empty URL file, a missing one, or a URL given both ways: a clear error, no guess."""
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(
        ValueError,
        match=r"^--database-url-file / OBSERVER_SIDECAR_DATABASE_URL_FILE: '.*empty' is empty$",
    ):
        resolve(parse("--database-url-file", str(empty)), {})
    with pytest.raises(
        ValueError, match=r"^--database-url-file / OBSERVER_SIDECAR_DATABASE_URL_FILE: cannot read"
    ):
        resolve(parse(), {"OBSERVER_SIDECAR_DATABASE_URL_FILE": str(tmp_path / "none")})
    good = tmp_path / "url"
    good.write_text("postgresql://u:pw@db/app")
    with pytest.raises(ValueError, match=r"^give the database URL once: --database-url-file"):
        resolve(parse("--database-url-file", str(good), "--database-url", "postgresql://db/x"), {})
    config = resolve(parse(), {"OBSERVER_SIDECAR_DATABASE_URL_FILE": str(good),
                               "OBSERVER_DATABASE_URL": "postgresql://fallback/db"})  # fmt: skip
    assert config.database_url == "postgresql://u:pw@db/app"
    assert "pw" not in repr(config)
