"""The sdist of the installed SQLAlchemy: downloaded once, cached, unpacked for each run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

# The files of SQLAlchemy's suite the gate runs (glob patterns, relative to the sdist): pools,
# reconnects, execution, the asyncio extension and ORM transactions. test_engine_py3k.py is
# the asyncio engine tests' name on older 2.0 releases.
PATTERNS = (
    "test/engine/test_pool.py",
    "test/engine/test_reconnect.py",
    "test/engine/test_execute.py",
    "test/ext/asyncio/test_engine*.py",
    "test/ext/asyncio/test_session*.py",
    "test/orm/test_transaction.py",
)


def installed_version() -> str:
    return version("sqlalchemy")


def cache_dir() -> Path:
    """``$OBSERVER_SQLA_SUITE_CACHE``, else ``$XDG_CACHE_HOME/pool-observer/sqla-suite``
    (``~/.cache/...``): outside the repository, so our own pytest never collects the suite."""
    explicit = os.environ.get("OBSERVER_SQLA_SUITE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pool-observer" / "sqla-suite"


def sdist(release: str, cache: Path) -> Path:
    """The cached ``sqlalchemy-<release>.tar.gz``, downloaded with pip when missing."""
    target = cache / f"sqlalchemy-{release}.tar.gz"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        # --no-binary sqlalchemy, not :all: (that would build pip's build tools from source too)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            "sqlalchemy",
            f"sqlalchemy=={release}",
            "--dest",
            tmp,
        ]
        subprocess.run(command, check=True)
        found = sorted(Path(tmp).glob("*.tar.gz"))
        if len(found) != 1:
            raise SystemExit(f"sqla-suite: pip download gave {found}, expected one .tar.gz")
        shutil.move(found[0], target)
    return target


def unpack(archive: Path, into: Path) -> Path:
    """Unpack what the suite needs (``test/``, its pytest configuration, the bootstrap of the
    testing plugin) and nothing of ``lib/sqlalchemy`` itself: the suite must import the
    installed release, which the observer imports too. Returns the suite's root."""
    root = into / archive.name.removesuffix(".tar.gz")
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            _, _, inner = member.name.partition("/")
            if inner.startswith("/") or ".." in Path(inner).parts:
                continue
            wanted = (
                inner.startswith("test/")
                or inner.startswith("lib/sqlalchemy/testing/plugin/")
                or inner in {"setup.cfg", "pyproject.toml"}
            )
            if wanted and (member.isfile() or member.isdir()):
                member.name = f"{root.name}/{inner}"
                members.append(member)
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4+: refuse links and absolute paths
            tar.extractall(into, members=members, filter="data")
        else:
            tar.extractall(into, members=members)  # names checked above
    return root


def suite_files(root: Path) -> list[str]:
    """The files of :data:`PATTERNS` present in this release (each pattern must match)."""
    files: list[str] = []
    for pattern in PATTERNS:
        matched = sorted(str(path.relative_to(root)) for path in root.glob(pattern))
        if not matched:
            raise SystemExit(f"sqla-suite: {pattern} is not in {root.name}")
        files.extend(matched)
    return files
