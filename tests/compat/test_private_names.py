"""No module of observer/ outside observer/_compat/ touches a private name of SQLAlchemy,
prometheus-client or OpenTelemetry: their internals are reached through one seam each."""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "observer"
SEAM = PACKAGE / "_compat"  # _compat/sqlalchemy.py, _compat/otel.py, _compat/prometheus.py
LIBRARIES = ("sqlalchemy", "prometheus_client", "opentelemetry")
_MANGLED = re.compile(r"^_[A-Za-z][A-Za-z0-9]*__[A-Za-z]\w*$")  # _ConnectionRecord__pool
_ATTR_FUNCTIONS = {"getattr", "hasattr", "setattr", "delattr"}
_DICT_METHODS = {"get", "pop", "setdefault"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _mangle(name: str, cls: str | None) -> str:
    """``__name`` written inside ``class cls`` is stored as ``_cls__name``."""
    if cls is not None and name.startswith("__") and not name.endswith("__"):
        return f"_{cls.lstrip('_')}{name}"
    return name


def defined_names(tree: ast.AST, *, on_any_object: bool = False) -> set[str]:
    """Private names a module defines: functions, classes, assignments, class attributes,
    ``self._x =`` (``other._x =`` too with ``on_any_object``: how a library sets its own
    attributes; in observer/ that is writing someone else's) and ``__slots__`` entries, with
    class-private names mangled."""
    names: set[str] = set()

    def visit(node: ast.AST, cls: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(_mangle(child.name, cls))
            targets: list[ast.expr] = []
            if isinstance(child, ast.Assign):
                targets = child.targets
            elif isinstance(child, ast.AnnAssign | ast.AugAssign):
                targets = [child.target]
            for target in targets:
                for part in ast.walk(target):
                    if isinstance(part, ast.Name):
                        names.add(_mangle(part.id, cls))
                    elif isinstance(part, ast.Attribute) and (
                        on_any_object
                        or (isinstance(part.value, ast.Name) and part.value.id in {"self", "cls"})
                    ):
                        names.add(_mangle(part.attr, cls))
                if isinstance(target, ast.Name) and target.id == "__slots__" and child.value:
                    names.update(_mangle(item, cls) for item in _strings(child.value))
            visit(child, child.name if isinstance(child, ast.ClassDef) else cls)

    visit(tree, None)
    return {name for name in names if _private(name)}


def _python_modules(tree: ast.AST) -> set[str]:
    """Local names bound to modules of Python's standard library (``sys`` in ``sys._getframe``)."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in sys.stdlib_module_names:
                    bound.add(alias.asname or alias.name.split(".")[0])
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and not node.level
            and node.module.split(".")[0] in sys.stdlib_module_names
        ):
            bound.update(alias.asname or alias.name for alias in node.names)
    return bound


def _strings(node: ast.AST) -> Iterator[str]:
    for part in ast.walk(node):
        if isinstance(part, ast.Constant) and isinstance(part.value, str):
            yield part.value


def _is_instance_dict(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "__dict__"


def _name_positions(tree: ast.AST) -> Iterator[ast.expr]:
    """Expressions used as an attribute's name: the second argument of getattr and friends,
    a key of ``x.__dict__`` (subscript, ``get``/``pop``/``setdefault``, ``in``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if isinstance(func, ast.Name) and func.id in _ATTR_FUNCTIONS and len(node.args) > 1:
                yield node.args[1]
            elif (
                isinstance(func, ast.Attribute)
                and func.attr in _DICT_METHODS
                and _is_instance_dict(func.value)
            ):
                yield node.args[0]
        elif isinstance(node, ast.Subscript) and _is_instance_dict(node.value):
            yield node.slice
        elif isinstance(node, ast.Compare) and any(map(_is_instance_dict, node.comparators)):
            yield node.left


def _indirect(tree: ast.AST, sinks: set[str]) -> Iterator[tuple[int, str]]:
    """Names that reach an attribute-name position through a variable: looped over in a
    literal (``for name in ("connect", "_return_conn")``) or passed to a local helper that
    hands its parameter to getattr (``_attr(pool, "_recycle", -1)``)."""
    helpers: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            params = [a.arg for a in node.args.posonlyargs + node.args.args]
            if sinks & set(params):
                helpers[node.name] = params
    for node in ast.walk(tree):
        if isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            targets = {n.id for n in ast.walk(node.target) if isinstance(n, ast.Name)}
            if targets & sinks and isinstance(node.iter, ast.Tuple | ast.List | ast.Set):
                line = getattr(node, "lineno", node.iter.lineno)
                yield from ((line, s) for s in _strings(node.iter))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            params = helpers.get(node.func.id)
            if params is None:
                continue
            passed = list(zip(params, node.args, strict=False))
            passed += [(k.arg, k.value) for k in node.keywords if k.arg]
            for param, value in passed:
                if param in sinks:
                    yield from ((node.lineno, s) for s in _strings(value))


def used_names(tree: ast.AST) -> set[tuple[int, str]]:
    """Private names a module reads or writes on other objects, with their line numbers:
    ``x._name``, ``getattr(x, "_name")`` (and has/set/delattr), ``x.__dict__["_name"]``,
    ``x.__dict__.get("_name")``, ``"_name" in x.__dict__``, the same through a variable (see
    ``_indirect``), ``from lib import _name`` and mangled ``"_Class__name"`` strings.
    Attributes of Python's own modules (``sys._getframe``) are not a library's."""
    python = _python_modules(tree)
    used: set[tuple[int, str]] = set()
    sinks: set[str] = set()
    for position in _name_positions(tree):
        used.update((position.lineno, s) for s in _strings(position))
        sinks.update(n.id for n in ast.walk(position) if isinstance(n, ast.Name))
    used.update(_indirect(tree, sinks))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if not (isinstance(node.value, ast.Name) and node.value.id in python):
                used.add((node.lineno, node.attr))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in LIBRARIES:
                used.update((node.lineno, alias.name) for alias in node.names)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _MANGLED.match(node.value)
        ):
            used.add((node.lineno, node.value))
    return {(line, name) for line, name in used if _private(name)}


@functools.cache
def library_private_names() -> frozenset[str]:
    """Every private name the installed SQLAlchemy, prometheus-client and OpenTelemetry define."""
    names: set[str] = set()
    for library in LIBRARIES:
        spec = importlib.util.find_spec(library)
        assert spec is not None, f"{library} not installed"
        assert spec.submodule_search_locations, f"{library} is not a package"
        for location in spec.submodule_search_locations:
            for path in Path(location).rglob("*.py"):
                tree = ast.parse(path.read_text(encoding="utf-8"))
                names |= defined_names(tree, on_any_object=True)
    return frozenset(names)


def _modules() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


@functools.cache
def observer_private_names() -> frozenset[str]:
    """Private names observer/ defines itself (those are ours to use anywhere)."""
    names: set[str] = set()
    for path in _modules():
        names |= defined_names(ast.parse(path.read_text(encoding="utf-8")))
    return frozenset(names)


def violations(source: str) -> list[tuple[int, str]]:
    """Library-private names ``source`` uses that observer/ does not define itself."""
    library = library_private_names()
    ours = observer_private_names() | defined_names(ast.parse(source))
    return sorted(
        (line, name)
        for line, name in used_names(ast.parse(source))
        if name in library and name not in ours
    )


def test_no_module_outside_the_seam_uses_a_private_name_of_a_library() -> None:
    """Every private name of SQLAlchemy, prometheus-client or OpenTelemetry that observer/
    reads, writes or imports is in observer/_compat/; anywhere else it is listed here."""
    found = []
    for path in _modules():
        if path.is_relative_to(SEAM):
            continue
        for line, name in violations(path.read_text(encoding="utf-8")):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name}")
    assert found == [], (
        "private names of SQLAlchemy / prometheus-client / OpenTelemetry outside "
        "observer/_compat/ (add an accessor there):\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("pool._max_overflow", [(1, "_max_overflow")]),
        ('getattr(pool, "_max_overflow", 0)', [(1, "_max_overflow")]),
        ('hasattr(pool, "_return_conn")', [(1, "_return_conn")]),
        ('engine.__dict__.get("_has_events")', [(1, "_has_events")]),
        ('engine.__dict__["_has_events"]', [(1, "_has_events")]),
        ('"_has_events" in engine.__dict__', [(1, "_has_events")]),
        ('for n in ("connect", "_return_conn"):\n    getattr(p, n)', [(1, "_return_conn")]),
        ('for n in ("connect", "_return_conn"):\n    p.__dict__.get(n)', [(1, "_return_conn")]),
        ('for suffix in ("_sum", "_count"):\n    print(suffix)', []),  # not an attribute
        ('def a(o, n):\n    return getattr(o, n)\na(pool, "_recycle")', [(3, "_recycle")]),
        ('getattr(record, "_ConnectionRecord__pool", None)', [(1, "_ConnectionRecord__pool")]),
        ("from sqlalchemy.pool.base import _finalize_fairy", [(1, "_finalize_fairy")]),
        ("pool_base._finalize_fairy", [(1, "_finalize_fairy")]),
        ("EngineTracer._remove_event_listener_params", [(1, "_remove_event_listener_params")]),
        ("child._upper_bounds", [(1, "_upper_bounds")]),
        ("import sys\nsys._getframe(1)", []),  # Python's, not a library's
        ("from sys import _getframe\n_getframe(1)", []),
        ("self._my_own = 1\nother._my_own", []),  # defined by the module itself
        ("engine._has_events = True", [(1, "_has_events")]),  # writing is touching too
        ("pool.size()", []),  # public
    ],
)
def test_the_scan_flags_library_private_names_and_only_those(
    source: str, expected: list[tuple[int, str]]
) -> None:
    """The scanner finds each way of reaching a library's private name (attribute, the
    attribute functions, the instance dict, a loop over names, an import, a mangled name),
    and lets through Python's own (``sys._getframe``), our own and public names."""
    assert violations(source) == expected


def test_the_library_names_are_read_from_the_installed_sources() -> None:
    """The names the scan compares against really come from the libraries (mangled slots too),
    so an empty or broken scan cannot pass the test above vacuously."""
    names = library_private_names()
    expected = {
        "_max_overflow",  # sqlalchemy/pool/impl.py: self._max_overflow = ...
        "_finalize_fairy",  # sqlalchemy/pool/base.py: def _finalize_fairy
        "_ConnectionRecord__pool",  # sqlalchemy/pool/base.py: __slots__ / self.__pool
        "_has_events",  # sqlalchemy/engine/base.py: class attribute
        "_upper_bounds",  # prometheus_client/metrics.py
        "_remove_event_listener_params",  # opentelemetry-instrumentation-sqlalchemy
    }
    assert expected - names == set()
    assert "_getframe" not in names
