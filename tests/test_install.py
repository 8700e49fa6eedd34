"""The built distributions install as the README says, and its Quickstart app works from them.

A stranger's path: ``python -m build``, a fresh venv without system site packages, the wheel
with the documented extras plus uvicorn and httpx from the package index, the README's
Quickstart code block as ``app.py`` under uvicorn, one request, one scrape. Nothing is cached
across runs: every run builds, creates and installs anew in its own temporary directories.
"""

from __future__ import annotations

import email
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import PG_HOST, PG_PORT, PG_USER, require, throwaway_database
from tests.helpers.processes import free_port
from tests.helpers.scrape import Samples, scrape, value

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
VERSION: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# In the sdist although git does not list them as such (hatchling writes them), and the files
# deliberately left out of it (pyproject.toml's [tool.hatch.build.targets.sdist]).
SDIST_GENERATED = {"PKG-INFO"}
SDIST_LEFT_OUT = re.compile(r"^(bench/results/|\.ci/)")


def _clean_env() -> dict[str, str]:
    """The environment of a stranger's shell: nothing that points Python at this clone."""
    return {
        key: val
        for key, val in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PROMETHEUS_MULTIPROC_DIR"}
        and not key.startswith("OBSERVER_")
    }


def _run(
    args: list[str], timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; fail with the end of its output when it exits non-zero."""
    done = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False
    )
    output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{output}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built with ``python -m build`` (the wheel from the sdist)."""
    require(
        importlib.util.find_spec("build") is not None,
        "the build package is missing (pip install -e '.[dev]')",
    )
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], timeout=120)
    return out


def test_build_makes_one_sdist_and_one_wheel_named_by_the_version(dist: Path) -> None:
    """Both distributions carry pyproject.toml's version, the one place it is written."""
    assert sorted(p.name for p in dist.iterdir()) == [
        f"pool_observer-{VERSION}-py3-none-any.whl",
        f"pool_observer-{VERSION}.tar.gz",
    ]


def test_distributions_pass_twine_check(dist: Path) -> None:
    """``twine check --strict`` (what PyPI would reject, warnings included) passes both."""
    require(
        importlib.util.find_spec("twine") is not None, "twine is missing (pip install -e '.[dev]')"
    )
    files = sorted(map(str, dist.iterdir()))
    done = _run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        timeout=60,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "1000"},
    )
    plain = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)
    assert re.findall(r"^Checking (\S+): (\w+)$", plain, re.MULTILINE) == [
        (file, "PASSED") for file in files
    ]


def test_wheel_holds_the_package_typed_with_complete_metadata(dist: Path) -> None:
    """The wheel has observer/ with py.typed and nothing else of the repo; its metadata names
    the supported Pythons, the license, the project links and the ``observer`` command."""
    with zipfile.ZipFile(dist / f"pool_observer-{VERSION}-py3-none-any.whl") as wheel:
        names = wheel.namelist()
        info = f"pool_observer-{VERSION}.dist-info"
        metadata = email.message_from_bytes(wheel.read(f"{info}/METADATA"))
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert "observer/py.typed" in names
    assert "observer/__init__.py" in names
    assert {name.split("/")[0] for name in names} == {"observer", info}
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert metadata["Name"] == "pool-observer"
    assert metadata["Version"] == VERSION
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["Description-Content-Type"] == "text/markdown"
    classifiers = metadata.get_all("Classifier") or []
    for classifier in (
        "Development Status :: 3 - Alpha",
        "Framework :: FastAPI",
        "License :: OSI Approved :: MIT License",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Typing :: Typed",
    ):
        assert classifier in classifiers, classifier
    repo = "https://github.com/pool-observer/pool-observer"
    assert sorted(metadata.get_all("Project-URL") or []) == [
        f"Changelog, {repo}/blob/main/CHANGELOG.md",
        f"Documentation, {repo}#readme",
        f"Homepage, {repo}",
        f"Issues, {repo}/issues",
    ]
    assert "observer = observer.cli:main" in entry_points.splitlines()


def test_sdist_holds_every_file_of_the_repository_but_the_left_out_ones(dist: Path) -> None:
    """The sdist carries the files the tests and docs need (every file git knows, ignored
    ones such as .venv excluded) except bench/results and .ci/."""
    git = shutil.which("git")
    require(git is not None and (ROOT / ".git").exists(), "not a git checkout")
    assert git is not None
    listed = _run(
        [git, "ls-files", "--cached", "--others", "--exclude-standard"], timeout=30, cwd=ROOT
    )
    expected = {
        path
        for path in listed.stdout.splitlines()
        if not SDIST_LEFT_OUT.match(path) and (ROOT / path).exists()
    }
    prefix = f"pool_observer-{VERSION}/"
    with tarfile.open(dist / f"pool_observer-{VERSION}.tar.gz") as sdist:
        members = {m.name.removeprefix(prefix) for m in sdist.getmembers() if m.isfile()}
    assert members - SDIST_GENERATED == expected
    assert "tests/test_install.py" in members
    assert "RELEASING.md" in members


def _quickstart(database_url: str) -> str:
    """The README's first python code block with its database URL replaced by ``database_url``."""
    block = re.search(r"^```python\n(.*?)^```", README, re.MULTILINE | re.DOTALL)
    assert block is not None, "README.md has no python code block"
    urls = re.findall(r'"postgresql\+asyncpg://[^"]*"', block.group(1))
    assert len(urls) == 1, urls
    return block.group(1).replace(urls[0], json.dumps(database_url))


def _readme_wheel_requirement(dist: Path) -> str:
    """The README's wheel install line, its ``<version>`` and ``dist/`` made this build's."""
    found = re.search(
        r'pip install "dist/(pool_observer-<version>-py3-none-any\.whl\[[^"]*)"', README
    )
    assert found is not None, "README.md does not say how to install the built wheel"
    return str(dist / found.group(1).replace("<version>", VERSION))


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    """A fresh venv without system site packages."""
    path = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(path)], timeout=60, env=_clean_env())
    return path


@pytest.fixture
def database() -> Iterator[str]:
    """A throwaway database on the real PostgreSQL for the Quickstart app."""
    with throwaway_database("observer_install") as name:
        yield name


def test_readme_quickstart_app_runs_from_the_wheel_in_a_fresh_venv(
    dist: Path, venv: Path, database: str, tmp_path: Path
) -> None:
    """Installed from the wheel as the README says, the Quickstart app (imported from the venv,
    not this clone) serves its route from PostgreSQL and the pool's metrics on /metrics."""
    env = _clean_env()
    python = str(venv / "bin" / "python")
    requirements = [_readme_wheel_requirement(dist), "uvicorn", "httpx"]
    _run(
        [python, "-m", "pip", "install", "--no-cache-dir", *requirements],
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    where = _run(
        [
            python,
            "-c",
            "import observer; print(observer.__file__); print(observer.__version__)",
        ],
        timeout=60,
        env=env,
        cwd=tmp_path,
    ).stdout.splitlines()
    installed = Path(where[0]).parent
    assert installed.is_relative_to(venv / "lib"), where
    assert where[1] == VERSION
    assert (installed / "py.typed").is_file()
    assert (venv / "bin" / "observer").is_file()

    app_dir = tmp_path / "app"
    app_dir.mkdir()
    url = f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"
    (app_dir / "app.py").write_text(_quickstart(url))
    routes = re.findall(r'^@app\.get\("([^"]+)"\)', (app_dir / "app.py").read_text(), re.MULTILINE)
    assert len(routes) == 1, routes
    assert re.search(r"^uvicorn app:app\b", README, re.MULTILINE), "no uvicorn command"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(venv / "bin" / "uvicorn"), "app:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=app_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            body = _get_when_up(f"{base}{routes[0]}", server, log_path)
            samples = scrape(f"{base}/metrics")
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    answer = json.loads(body)
    assert list(answer) == ["connections"]
    assert isinstance(answer["connections"], int)
    assert answer["connections"] >= 1  # at least the app's own connection
    hook_errors = {key: n for key, n in samples.items() if key[0] == "observer_hook_errors_total"}
    assert hook_errors  # one series per hook, made up front
    assert set(hook_errors.values()) == {0.0}
    _assert_one_request_on_the_pool(samples, f"postgresql://{PG_HOST}:{PG_PORT}/{database}")
    assert value(samples, "sqlalchemy_route_checkouts_total", route=routes[0]) == 1.0
    assert value(samples, "sqlalchemy_route_requests_total", route=routes[0]) == 1.0


def _get_when_up(url: str, server: subprocess.Popen[bytes], log: Path) -> str:
    """GET ``url`` once the server accepts connections (it fails if the server exits first)."""
    deadline = time.monotonic() + 30
    while True:
        assert server.poll() is None, f"uvicorn exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
                return str(response.read().decode())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{url}: {exc}\n{log.read_text()[-3000:]}") from exc
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError):
                raise AssertionError(f"{url}: {exc}\n{log.read_text()[-3000:]}") from exc
        assert time.monotonic() < deadline, f"uvicorn did not start:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _assert_one_request_on_the_pool(samples: Samples, pool: str) -> None:
    """The pool series after exactly one request that used one session and one connection."""
    assert value(samples, "sqlalchemy_pool_checkouts_total", pool=pool) == 1.0
    assert value(samples, "sqlalchemy_pool_connections_opened_total", pool=pool) == 1.0
    assert value(samples, "sqlalchemy_pool_checked_out_connections", pool=pool) == 0.0
    assert value(samples, "sqlalchemy_pool_checked_in_connections", pool=pool) == 1.0
    assert value(samples, "sqlalchemy_pool_size", pool=pool) == 20.0
    assert value(samples, "sqlalchemy_pool_max_connections", pool=pool) == 30.0
    assert value(samples, "sqlalchemy_orm_sessions_opened_total") == 1.0
    assert value(samples, "sqlalchemy_orm_sessions_closed_total") == 1.0
    assert value(samples, "sqlalchemy_orm_sessions_open") == 0.0
