"""`observer doctor --alembic-config alembic.ini`: the URL from the project, --fail-on drift."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from observer.cli import main
from observer.doctor._alembic_config import url_from_alembic_config
from tests.helpers.alembic_project import config, migrate, url


def _ini(tmp_path: Path, value: str) -> str:
    path = tmp_path / "alembic.ini"
    path.write_text(f"[alembic]\nscript_location = migrations\nsqlalchemy.url = {value}\n")
    return str(path)


def test_the_url_comes_from_the_ini_its_interpolation_or_env_pys_variable(
    tmp_path: Path,
) -> None:
    """sqlalchemy.url as written; %(NAME)s filled from the environment (%(here)s: the ini's
    directory); empty, the template's placeholder or an unset name: $DATABASE_URL and its
    usual aliases; nothing at all: a usage error naming the variables."""
    written = _ini(tmp_path, "postgresql://app@db/app")
    assert url_from_alembic_config(written, {}) == (
        "postgresql://app@db/app",
        f"sqlalchemy.url in {written}",
    )
    templated = _ini(tmp_path, "postgresql://app:%(DB_PASSWORD)s@db/%(here)s")
    assert url_from_alembic_config(templated, {"DB_PASSWORD": "p%ss"}) == (
        f"postgresql://app:p%ss@db/{tmp_path.resolve()}",
        f"sqlalchemy.url in {templated}, interpolated from the environment",
    )
    assert url_from_alembic_config(templated, {"DATABASE_URL": "postgresql://x@h/d"}) == (
        "postgresql://x@h/d",
        f"$DATABASE_URL (sqlalchemy.url in {templated} is empty or filled in by env.py)",
    )
    for value in ("", "driver://user:pass@localhost/dbname"):
        empty = _ini(tmp_path, value)
        assert url_from_alembic_config(empty, {"SQLALCHEMY_DATABASE_URL": "postgresql://a/b"})[
            0
        ] == ("postgresql://a/b")
        with pytest.raises(ValueError, match=r"none of \$DATABASE_URL, \$SQLALCHEMY_DATABASE_URL"):
            url_from_alembic_config(empty, {})
    with pytest.raises(ValueError, match="cannot read"):
        url_from_alembic_config(str(tmp_path / "missing.ini"), {})


@pytest.mark.postgres
def test_doctor_reads_the_url_from_alembic_ini_and_gates_on_drift_alone(
    project: Path,
    database: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`observer doctor --alembic-config alembic.ini` (no URL) checks the database the ini
    names and says so; --fail-on drift exits 1 while the database is behind and 0 once it is
    at the head, whatever else doctor finds; without migration scripts it is a usage error."""
    monkeypatch.delenv("OBSERVER_DATABASE_URL", raising=False)
    asyncio.run(migrate(config(project), "upgrade", "0001"))
    capsys.readouterr()
    code = main(["doctor", "--alembic-config", str(project), "--fail-on", "drift"])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"observer doctor: database URL from sqlalchemy.url in {project}" in err
    assert "schema   Alembic revision 0001 in the database, 0002 in the code: behind" in out

    asyncio.run(migrate(config(project), "upgrade", "head"))
    capsys.readouterr()
    code = main(["doctor", "--alembic-config", str(project), "--fail-on", "drift"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "0002 in the code: current" in out

    code = main(["doctor", url(database), "--fail-on", "drift"])
    assert code == 2
    assert "--fail-on drift needs the migration scripts" in capsys.readouterr().err
