"""Imports point down the package map: no cycle, no layer importing one above it, and every
module of the package imports as the first import of a fresh interpreter."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = "observer"
REPO = Path(__file__).resolve().parents[2]

# The package map (README, "Layout"): a component may import one of a lower rank. Equal ranks:
# within one component; the few core edges below; products (7) import each other's public modules.
RANKS = {
    "_compat": 0,
    "_types": 0,
    "settings": 0,
    "_version": 0,
    "_asgi_types": 0,
    "_sweeper": 0,
    "_extras": 0,
    "_engines": 0,
    "_option_rows": 0,
    "_values": 0,  # reading option values from text, for settings and the commands
    "_dsn": 0,
    "_environment": 0,
    "metrics": 1,
    "attribution": 2,
    "_logs": 3,
    "_hooks": 3,
    "_otel": 3,
    "pool": 4,
    "sessions": 4,
    "asgi": 5,
    "_observer": 6,
    "_instrument": 6,
    "__init__": 6,
    "server": 7,
    "doctor": 7,
    "sidecar": 7,
    "alembic": 7,
    "monitoring": 7,
    "demo": 7,
    "cli": 7,
    "pytest_plugin": 7,
    "_reference": 7,  # renders docs/reference.md from the contract tables (python -m)
}
PRODUCTS = 7
# Same rank, different components: allowed edges, each with its reason.
SAME_RANK = {
    ("_extras", "settings"): "a missing extra is a ConfigurationError",
    ("_engines", "settings"): "something that is not an engine is a ConfigurationError",
    ("_option_rows", "settings"): "the options' table is read from Settings' fields",
    ("settings", "_values"): "options read numbers and hosts as the commands' flags do",
    ("settings", "_environment"): "an unknown OBSERVER_* variable is a ConfigurationError",
    ("_hooks", "_logs"): "a failing hook is logged (rate-limited) where it is counted",
    ("_instrument", "_observer"): "instrument() is the one-call setup of an Observer",
    ("__init__", "_observer"): "the public names",
    ("__init__", "_instrument"): "the public names",
}
# observer/server/ is the products' shared base (the server view, findings): its private
# modules are shared by doctor, sidecar and alembic by design.
SHARED_BY_PRODUCTS = "server"


class Import(NamedTuple):
    source: str
    target: str
    where: str  # file:line, for the failure message


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root`` (``root/observer``), by dotted name."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST, typing: bool) -> Iterator[ast.AST]:
    """Every node of ``tree``, at any depth (functions too); ``if TYPE_CHECKING:`` bodies
    only with ``typing`` (their ``else`` runs)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node) and not typing:
            for child in node.orelse:
                yield child
                yield from _statements(child, typing)
            continue
        yield node
        yield from _statements(node, typing)


def _dynamic_names(tree: ast.AST) -> set[int]:
    """ids of the string constants that may name a module to import: the argument of
    ``import_module()``/``__import__()``, or an item of a literal table (a tuple, list, set or
    dict value), like the CLI's command table. (Not a logger name or a docstring.)"""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and node.args:
                ids.add(id(node.args[0]))
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            ids.update(id(item) for item in node.elts)
        elif isinstance(node, ast.Dict):
            ids.update(id(value) for value in node.values)
    return ids


def runtime_imports(
    name: str, path: Path, known: Iterable[str], root: Path, *, typing: bool = False
) -> list[Import]:
    """The package modules ``name`` imports when it runs: module- and function-level
    ``import``/``from ... import`` (relative ones resolved; ``from pkg import x`` is the
    submodule ``pkg.x`` when there is one, else ``pkg``), and module names given to
    ``import_module`` or listed in a literal table. ``if TYPE_CHECKING:`` imports only with
    ``typing``."""
    known = set(known)
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    dynamic = _dynamic_names(tree)
    found = []

    def add(target: str, node: ast.stmt | ast.expr) -> None:
        edge = Import(name, target, f"{path.relative_to(root)}:{node.lineno}")
        if target != name and edge not in found:  # one edge for ``from m import a, b``
            found.append(edge)

    for node in _statements(tree, typing):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] == PACKAGE:
                    add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            if base.partition(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base, node)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value in known
            and node.value != PACKAGE
            and id(node) in dynamic
        ):
            add(node.value, node)
    return found


def import_graph(root: Path = REPO, *, typing: bool = False) -> list[Import]:
    """Every runtime import between modules of the package under ``root`` (with ``typing``,
    the ``if TYPE_CHECKING:`` imports too)."""
    found = modules(root)
    return [
        edge
        for name, path in found.items()
        for edge in runtime_imports(name, path, found, root, typing=typing)
    ]


def find_cycle(edges: Iterable[Import]) -> list[Import] | None:
    """One cycle of the graph, as the imports that close it, or ``None``."""
    graph: dict[str, list[Import]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge)
    done: set[str] = set()
    path: list[Import] = []
    on_path: dict[str, int] = {}  # module -> its position in ``path``

    def visit(module: str) -> list[Import] | None:
        on_path[module] = len(path)
        for edge in graph.get(module, ()):
            if edge.target in on_path:
                return [*path[on_path[edge.target] :], edge]
            if edge.target not in done:
                path.append(edge)
                cycle = visit(edge.target)
                if cycle is not None:
                    return cycle
                path.pop()
        del on_path[module]
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle is not None:
                return cycle
    return None


def component(module: str) -> str:
    """``observer.pool._tracker`` -> ``pool``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _private_below_component(module: str) -> bool:
    return any(part.startswith("_") for part in module.split(".")[2:])


def layering_violations(edges: Iterable[Import]) -> list[str]:
    """Each import that does not point down the package map, explained."""
    problems = []
    for edge in edges:
        source, target = component(edge.source), component(edge.target)
        if source not in RANKS or target not in RANKS:
            unranked = source if source not in RANKS else target
            problems.append(f"{edge.where}: {unranked!r} has no rank in the package map")
            continue
        if source == target:
            continue
        high, low = RANKS[source], RANKS[target]
        line = f"{edge.where}: {edge.source} ({high}) imports {edge.target} ({low})"
        if low > high:
            problems.append(f"{line}: a lower layer imports a higher one")
        elif low == high and high == PRODUCTS:
            if target != SHARED_BY_PRODUCTS and _private_below_component(edge.target):
                problems.append(f"{line}: a product imports another product's private module")
        elif low == high and (source, target) not in SAME_RANK:
            problems.append(f"{line}: same layer, different components, not in SAME_RANK")
    return problems


def _describe(cycle: list[Import]) -> str:
    return "\n".join(f"  {edge.source} -> {edge.target}  ({edge.where})" for edge in cycle)


def test_the_import_graph_has_no_cycle() -> None:
    """No module of the package imports itself back through other modules at run time
    (function-level imports count; ``if TYPE_CHECKING:`` ones do not)."""
    edges = import_graph()
    assert len(edges) > 100  # the scan sees the package's imports at all
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle:\n" + _describe(cycle or [])


def test_no_cycle_even_through_type_checking_imports() -> None:
    """Annotations do not loop either: with the ``if TYPE_CHECKING:`` imports added, the graph
    still has no cycle (a lower layer names what it needs as a Protocol, not the class above)."""
    cycle = find_cycle(import_graph(typing=True))
    assert cycle is None, "import cycle through type-checking imports:\n" + _describe(cycle or [])


def test_imports_point_down_the_package_map() -> None:
    """Every runtime import goes to a lower layer of the package map, or stays in its
    component, or is one of the few listed same-layer edges, or goes from a product to
    another product's public module."""
    problems = layering_violations(import_graph())
    assert problems == [], "imports against the package map:\n" + "\n".join(problems)


def test_every_component_has_a_rank() -> None:
    """A new top-level module or subpackage must be placed in the package map (RANKS)."""
    components = {component(name) for name in modules(REPO)}
    assert sorted(components - RANKS.keys()) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)


def test_the_scan_sees_every_form_of_runtime_import(tmp_path: Path) -> None:
    """The scanner resolves relative imports and ``from pkg import submodule``, sees imports
    inside functions and module names given to ``import_module`` or listed in a table (not a
    docstring or a logger name), and skips ``if TYPE_CHECKING:`` imports."""
    _write(
        tmp_path,
        {
            "observer/__init__.py": "from observer import _observer\n",
            "observer/_observer.py": (
                "from typing import TYPE_CHECKING\n"
                "from observer.pool import _tracker\n"
                "from .pool import PoolState\n"
                "if TYPE_CHECKING:\n"
                "    from observer.asgi import _middleware\n"
                "else:\n"
                "    import observer.asgi\n"
            ),
            "observer/pool/__init__.py": '"""observer.asgi"""\n',
            "observer/pool/_tracker.py": (
                "def late():\n    from .. import _observer\n\nTABLE = {'x': ('observer.asgi', 1)}\n"
                "log = getLogger('observer.asgi._middleware')\n"
                "import_module('observer.asgi._middleware')\n"
            ),
            "observer/asgi/__init__.py": "",
            "observer/asgi/_middleware.py": "",
        },
    )
    edges = {(edge.source, edge.target, edge.where) for edge in import_graph(tmp_path)}
    assert edges == {
        ("observer", "observer._observer", "observer/__init__.py:1"),
        ("observer._observer", "observer.pool._tracker", "observer/_observer.py:2"),
        ("observer._observer", "observer.pool", "observer/_observer.py:3"),
        ("observer._observer", "observer.asgi", "observer/_observer.py:7"),
        ("observer.pool._tracker", "observer._observer", "observer/pool/_tracker.py:2"),
        ("observer.pool._tracker", "observer.asgi", "observer/pool/_tracker.py:4"),
        ("observer.pool._tracker", "observer.asgi._middleware", "observer/pool/_tracker.py:6"),
    }


def test_a_cycle_and_upward_imports_are_reported_with_their_lines(tmp_path: Path) -> None:
    """The checks fail, naming file and line, on a planted cycle through a function-level
    import and on imports against the map (up a layer; sideways in a layer; a product's private
    module from another product; an unranked component)."""
    _write(
        tmp_path,
        {
            "observer/__init__.py": "",
            "observer/_observer.py": "def f():\n    from observer.pool import _tracker\n",
            "observer/pool/__init__.py": "",
            "observer/pool/_tracker.py": (
                "import observer.sessions\nfrom observer import _observer\n"
            ),
            "observer/sessions/__init__.py": "from observer.doctor import check_engine\n",
            "observer/doctor/__init__.py": "from observer.sidecar import _config\n",
            "observer/sidecar/__init__.py": "from observer import server\nimport observer._new\n",
            "observer/sidecar/_config.py": "from observer.server import _view\n",
            "observer/server/__init__.py": "",
            "observer/server/_view.py": "",
            "observer/_new.py": "",
        },
    )
    edges = import_graph(tmp_path)
    cycle = find_cycle(edges)
    assert cycle is not None
    assert _describe(cycle) == (
        "  observer._observer -> observer.pool._tracker  (observer/_observer.py:2)\n"
        "  observer.pool._tracker -> observer._observer  (observer/pool/_tracker.py:2)"
    )
    assert layering_violations(edges) == [
        "observer/doctor/__init__.py:1: observer.doctor (7) imports observer.sidecar._config (7):"
        " a product imports another product's private module",
        "observer/pool/_tracker.py:1: observer.pool._tracker (4) imports observer.sessions (4):"
        " same layer, different components, not in SAME_RANK",
        "observer/pool/_tracker.py:2: observer.pool._tracker (4) imports observer._observer (6):"
        " a lower layer imports a higher one",
        "observer/sessions/__init__.py:1: observer.sessions (4) imports observer.doctor (7):"
        " a lower layer imports a higher one",
        "observer/sidecar/__init__.py:2: '_new' has no rank in the package map",
    ]


def _import_first(module: str) -> tuple[str, str] | None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    if result.returncode == 0:
        return None
    return module, result.stderr.strip().splitlines()[-1] if result.stderr else "no output"


@pytest.mark.slow
def test_every_module_imports_as_the_first_import() -> None:
    """``python -c "import observer.X"`` works for every module X (a cycle through a
    partially initialised module fails here even when the graph scan misses it)."""
    names = sorted(modules(REPO))
    assert len(names) > 50
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [failure for failure in pool.map(_import_first, names) if failure]
    assert failures == []
