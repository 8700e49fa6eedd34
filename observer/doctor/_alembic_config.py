"""doctor and an Alembic project: the database URL its alembic.ini names, and --fail-on drift."""

from __future__ import annotations

import argparse
import configparser
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from observer.doctor._report import EXIT_FINDINGS, EXIT_OK, Report

FAIL_ON = ("error", "warning", "info", "drift")
# What env.py files usually read when alembic.ini's sqlalchemy.url is left empty or is a
# %(...)s placeholder filled in by env.py.
URL_VARIABLES = ("DATABASE_URL", "SQLALCHEMY_DATABASE_URL", "SQLALCHEMY_URL", "DB_URL")
# `alembic init` writes this placeholder: not a database.
_TEMPLATE_URL = "driver://user:pass@localhost/dbname"
DRIFT = "alembic_schema_drift"


def url_from_alembic_config(
    path: str, environ: Mapping[str, str] | None = None, section: str = "alembic"
) -> tuple[str, str]:
    """(URL, where it came from) for the alembic.ini at ``path``.

    ``sqlalchemy.url`` as written; if it uses ``%(NAME)s`` interpolation, filled in from the
    environment (``%(here)s`` is the ini's directory, as Alembic does); if it is empty, the
    template's placeholder, or names a variable that is not set, the first of
    :data:`URL_VARIABLES` that is set. ValueError (a usage error) when none gives a URL.
    """
    env = os.environ if environ is None else environ
    ini = Path(path)
    parser = configparser.RawConfigParser()
    if not parser.read(ini):
        raise ValueError(f"--alembic-config: cannot read {path!r} (no such file?)")
    written = parser.get(section, "sqlalchemy.url", fallback="").strip()
    where = f"sqlalchemy.url in {path}"
    if written and written != _TEMPLATE_URL:
        if "%(" not in written:
            return written, where
        filled = _interpolate(ini, section, env)
        if filled:
            return filled, f"{where}, interpolated from the environment"
    for name in URL_VARIABLES:
        if env.get(name, "").strip():
            return env[name].strip(), f"${name} ({where} is empty or filled in by env.py)"
    raise ValueError(
        f"no database URL: {where} is empty or filled in by env.py, and none of "
        f"{', '.join('$' + n for n in URL_VARIABLES)} is set; give DATABASE_URL as an argument"
    )


def _interpolate(ini: Path, section: str, env: Mapping[str, str]) -> str | None:
    """sqlalchemy.url with ``%(name)s`` filled from the environment; None if a name is unset."""
    defaults = {key.lower(): value.replace("%", "%%") for key, value in env.items()}
    defaults["here"] = str(ini.resolve().parent).replace("%", "%%")
    parser = configparser.ConfigParser(defaults=defaults)
    parser.read(ini)
    try:
        return parser.get(section, "sqlalchemy.url").strip() or None
    except (configparser.InterpolationError, configparser.NoOptionError):
        return None


def exit_code(report: Report, fail_on: str) -> int:
    """``--fail-on drift``: 1 on a schema drift finding only; otherwise by severity."""
    if fail_on == "drift":
        return EXIT_FINDINGS if any(f.code == DRIFT for f in report.findings) else EXIT_OK
    return report.exit_code(fail_on)


def with_alembic(raw: str | None, args: argparse.Namespace) -> str:
    """The URL to check: ``raw`` (the argument or $OBSERVER_DATABASE_URL), else the one the
    ``--alembic-config`` project migrates (said on stderr); ValueError for a usage error."""
    if args.fail_on == "drift" and not (args.alembic_config or args.alembic_script_location):
        raise ValueError(
            "--fail-on drift needs the migration scripts to compare with: give "
            "--alembic-config alembic.ini or --alembic-script-location DIR"
        )
    if raw:
        return raw
    url, source = url_from_alembic_config(args.alembic_config)
    print(f"observer doctor: database URL from {source}", file=sys.stderr)
    return url
