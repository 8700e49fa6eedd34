"""The options as the reference documents them, read from ``Settings``' fields and docstrings."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

from observer import settings

__all__ = ["OptionRow", "option_rows"]


@dataclass(frozen=True, slots=True)
class OptionRow:
    """One option as the reference documents it."""

    name: str
    env_var: str
    type: str
    default: object
    doc: str


def option_rows() -> tuple[OptionRow, ...]:
    """Every option of :class:`Settings`, in field order: keyword, ``OBSERVER_*`` variable,
    type, default and meaning, read from the fields and their docstrings (the one source)."""
    tree = ast.parse(Path(settings.__file__).read_text(encoding="utf-8"))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings").body
    found: dict[str, tuple[str, str]] = {}
    for node, following in zip(body, [*body[1:], None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = ""
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                doc = inspect.cleandoc(str(following.value.value))
            found[node.target.id] = (ast.unparse(node.annotation), doc)
    return tuple(
        OptionRow(
            name=field.name,
            env_var=settings.ENV_PREFIX + field.name.upper(),
            type=found[field.name][0],
            default=field.default,
            doc=found[field.name][1],
        )
        for field in dataclasses.fields(settings.Settings)
    )
