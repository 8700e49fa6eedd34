"""The layout shows the architecture: small modules and functions, products with honest APIs."""

from __future__ import annotations
import __future__

import ast
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

from observer.cli import COMMANDS

PACKAGE = Path(__file__).resolve().parents[1] / "observer"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

# Product package -> (its __all__, its public submodules). Everything else lives in
# _-prefixed modules. monitoring.config holds MonitoringConfig (README: `--set` takes its
# fields); demo.app is the demo's application, whose lines the demo's summary points at.
PRODUCTS: dict[str, tuple[set[str], set[str]]] = {
    "observer.doctor": (
        {"Report", "add_arguments", "check_engine", "check_sync_engine", "run"},
        set(),
    ),
    "observer.sidecar": (
        {"Sidecar", "SidecarConfig", "add_arguments", "check_health", "run"},
        set(),
    ),
    "observer.alembic": (
        {
            "CodeRevisions",
            "MigrationError",
            "SchemaState",
            "SchemaWatcher",
            "run_migrations",
            "watch_schema",
        },
        set(),
    ),
    "observer.monitoring": ({"add_arguments", "run"}, {"config"}),
    "observer.demo": ({"add_arguments", "run"}, {"app"}),
}


def long_modules(root: Path, limit: int) -> list[str]:
    """``path (N lines)`` of every module under ``root`` longer than ``limit`` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            found.append(f"{path.relative_to(root.parent).as_posix()} ({lines} lines)")
    return found


def long_functions(root: Path, limit: int) -> list[str]:
    """``path:line qualified.name (N lines)`` of every function or method under ``root``
    longer than ``limit`` lines, nested ones included (``def`` line to last line)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(root.parent).as_posix()
        for node, name in _functions(tree, ""):
            assert node.end_lineno is not None
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append(f"{where}:{node.lineno} {name} ({lines} lines)")
    return found


def _functions(
    node: ast.AST, prefix: str
) -> list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str]]:
    found: list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, str]] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                found.append((child, name))
            found += _functions(child, f"{name}.")
        else:
            found += _functions(child, prefix)
    return found


def test_no_module_is_over_400_lines() -> None:
    """Every module under observer/ has at most 400 lines; the message lists every offender."""
    offenders = long_modules(PACKAGE, MAX_MODULE_LINES)
    assert offenders == [], "modules over 400 lines:\n" + "\n".join(offenders)


def test_no_function_is_over_80_lines() -> None:
    """Every function and method under observer/ has at most 80 lines; the message lists every
    offender with file:line and length."""
    offenders = long_functions(PACKAGE, MAX_FUNCTION_LINES)
    assert offenders == [], "functions over 80 lines:\n" + "\n".join(offenders)


def test_the_checks_name_every_offender_with_its_place_and_length(tmp_path: Path) -> None:
    """The two checks report each module and function over the limit (methods and nested
    functions by qualified name) and nothing at the limit."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)

    def body(n: int) -> str:
        return "".join("    x = 1\n" for _ in range(n))

    (root / "ok.py").write_text(f"def fits():\n{body(79)}")  # 80 lines: at the limit
    (root / "sub" / "big.py").write_text(
        "class Box:\n"  # line 1
        f"    def method(self):\n{body(80).replace('    ', '        ')}"  # 2-82: 81 lines
        f"async def outer():\n"  # line 83
        f"    def inner():\n{body(80).replace('    ', '        ')}"  # 84-164: 81 lines
    )
    assert long_functions(root, 80) == [
        "pkg/sub/big.py:2 Box.method (81 lines)",
        "pkg/sub/big.py:83 outer (82 lines)",
        "pkg/sub/big.py:84 outer.inner (81 lines)",
    ]
    assert long_modules(root, 163) == ["pkg/sub/big.py (164 lines)"]
    assert long_modules(root, 164) == []


@pytest.mark.parametrize("name", sorted(PRODUCTS))
def test_a_product_package_exports_exactly_its_public_api(name: str) -> None:
    """A product package's __all__ is its public API, it has no other public attribute, and
    its only public submodules are the documented ones: internals are _-prefixed."""
    names, submodules = PRODUCTS[name]
    package = importlib.import_module(name)
    public = {
        attribute
        for attribute, value in vars(package).items()
        if not attribute.startswith("_") and not isinstance(value, ModuleType | __future__._Feature)
    }
    modules = {
        module.name
        for module in pkgutil.iter_modules(package.__path__)
        if not module.name.startswith("_")
    }
    assert set(package.__all__) == names
    assert len(package.__all__) == len(names)
    assert public == names
    assert modules == submodules


def test_every_command_is_a_package_exporting_add_arguments_and_run() -> None:
    """Each ``observer`` subcommand loads a product package whose __all__ has the pair."""
    assert {name: module for name, (module, _) in COMMANDS.items()} == {
        "demo": "observer.demo",
        "doctor": "observer.doctor",
        "sidecar": "observer.sidecar",
        "render": "observer.monitoring",
    }
    for module, _ in COMMANDS.values():
        assert {"add_arguments", "run"} <= set(importlib.import_module(module).__all__)
