"""Fixtures of the observer.alembic tests: a database of their own, an Alembic project on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import throwaway_database
from tests.helpers.alembic_project import make_project, url


@pytest.fixture
def database() -> Iterator[str]:
    """A database of its own for one test (migrations create and drop tables)."""
    with throwaway_database("observer_alembic") as name:
        yield name


@pytest.fixture
def project(tmp_path: Path, database: str) -> Path:
    """`alembic init -t async` project on the test's database; the path of its alembic.ini."""
    return make_project(tmp_path, url(database))
