"""The floors corner of the supported-versions matrix (scripts/matrix) installs exactly the
lowest releases pyproject.toml declares, for every dependency it pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def matrix_pins() -> dict[str, Version]:
    """name -> version of the floors corner's pins in scripts/matrix."""
    text = (ROOT / "scripts" / "matrix").read_text()
    block = text[text.index("  floors)") : text.index("  newest)")]
    pins = [Requirement(pin) for pin in re.findall(r'"([^"]+==[^"]+)"', block)]
    return {canonicalize_name(pin.name): Version(str(pin.specifier)[2:]) for pin in pins}


def declared_floors() -> dict[str, set[Version]]:
    """name -> every ``>=`` floor pyproject.toml declares for it (dependencies and extras)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts.extend(extra)
    floors: dict[str, set[Version]] = {}
    for text in texts:
        requirement = Requirement(text)
        for spec in requirement.specifier:
            if spec.operator == ">=":
                name = canonicalize_name(requirement.name)
                floors.setdefault(name, set()).add(Version(spec.version))
    return floors


def test_the_floors_corner_pins_the_declared_floors() -> None:
    """Each pinned dependency has one declared floor, and the corner installs exactly it."""
    pins, floors = matrix_pins(), declared_floors()
    assert sorted(pins) == [
        "aiosqlite",
        "asyncpg",
        "fastapi",
        "opentelemetry-api",
        "opentelemetry-instrumentation-sqlalchemy",
        "opentelemetry-sdk",
        "prometheus-client",
        "sqlalchemy",
        "starlette",
        "structlog",
    ]
    assert {name: floors.get(name) for name in pins} == {
        name: {version} for name, version in pins.items()
    }
