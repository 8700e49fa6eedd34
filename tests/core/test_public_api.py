"""The public namespace is curated: ``__all__`` lists exactly what ``observer`` exports."""

from __future__ import annotations
import __future__

import importlib
import re
from pathlib import Path

import pytest

import observer


def test_all_lists_the_public_names_and_nothing_else() -> None:
    """Every public attribute of the package is in __all__, and every name in __all__ exists."""
    public = {
        name
        for name in dir(observer)
        if not name.startswith("_")
        and not isinstance(getattr(observer, name), type(observer) | __future__._Feature)
    }
    assert public | {"__version__"} == set(observer.__all__)
    assert all(hasattr(observer, name) for name in observer.__all__)


def test_the_cli_lists_its_commands() -> None:
    """``observer --help`` offers the demo (and other commands whose modules are present)."""
    from observer.cli import build_parser

    help_text = build_parser().format_help()
    assert "demo" in help_text


ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "bench" / "README.md",
]
# Dotted names in the docs that are not Python names, each with why.
NOT_PYTHON = {
    "observer.hook_error": "a structlog event name (docs/logging.md), not an attribute",
    "observer.feature_off": "a log event name (docs/compatibility.md), not an attribute",
}
FENCED = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
# Not part of a longer word, path or name: pool-observer.md, docs/observer.x, my_observer.x.
DOTTED = re.compile(r"(?<![\w./-])observer(?:\.\w+)+")
FROM_IMPORT = re.compile(r"\bfrom\s+(observer(?:\.\w+)*)\s+import[ \t]+\(?([\w \t,]+)")


def documented_names(markdown: str) -> set[str]:
    """Every ``observer.<...>`` name in the code blocks and code spans of a Markdown text,
    including the names a ``from observer.x import a, b`` line imports."""
    blocks = [match.group(2) for match in FENCED.finditer(markdown)]
    spans = [match.group(2) for match in SPAN.finditer(FENCED.sub("", markdown))]
    names: set[str] = set()
    for code in blocks + spans:
        names.update(DOTTED.findall(code))
        for module, imported in FROM_IMPORT.findall(code):
            names.update(f"{module}.{name}" for name in re.findall(r"\w+", imported))
    return names


def resolve(name: str) -> object:
    """Import the longest importable module prefix of ``name``, then getattr the rest."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:end]))
        except ModuleNotFoundError as exc:
            if exc.name != ".".join(parts[:end]):
                raise  # the module exists but one of its own imports is missing
            continue
        for attribute in parts[end:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(name)


def test_documented_names_finds_code_names_only() -> None:
    """Names come from code spans and fenced blocks (and from-imports), not from prose, file
    names or longer words."""
    markdown = (
        "Prose observer.prose is skipped; `observer.span(x)` and `pool-observer.md` and\n"
        "`docs/observer.md` too.\n\n```python\nimport observer.alembic\n"
        "from observer.doctor import check_engine, check_sync_engine\nobserver.Observer()\n```\n"
    )
    assert documented_names(markdown) == {
        "observer.span",
        "observer.alembic",
        "observer.doctor",
        "observer.doctor.check_engine",
        "observer.doctor.check_sync_engine",
        "observer.Observer",
    }


def test_resolve_reports_a_name_that_does_not_exist() -> None:
    """A missing attribute or module is an error, not a silent pass."""
    from observer.monitoring.config import MonitoringConfig

    assert resolve("observer.monitoring.config.MonitoringConfig") is MonitoringConfig
    assert resolve("observer.pytest_plugin") is importlib.import_module("observer.pytest_plugin")
    with pytest.raises(AttributeError):
        resolve("observer.doctor.no_such_check")
    with pytest.raises(ModuleNotFoundError):
        resolve("observerx.thing")


def test_every_name_the_docs_use_resolves_and_is_public() -> None:
    """Every ``observer.<...>`` name in a code span or block of README.md, docs/*.md and
    bench/README.md imports and resolves, and none of them is private (``_name``)."""
    found = {name for path in DOCUMENTS for name in documented_names(path.read_text())}
    names = found - set(NOT_PYTHON)
    assert {
        "observer.instrument",
        "observer.Observer",
        "observer.doctor.check_engine",
        "observer.doctor.check_sync_engine",
        "observer.alembic.run_migrations",
        "observer.alembic.watch_schema",
        "observer.pytest_plugin",
        "observer.monitoring.config.MonitoringConfig",
    } <= names
    assert set(NOT_PYTHON) <= found  # an allowlist entry no document uses any more goes
    unresolved = {}
    for name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            unresolved[name] = repr(exc)
    assert unresolved == {}
    private = {
        n for n in names if any(p.startswith("_") and not p.endswith("__") for p in n.split("."))
    }
    assert private == set()
