"""A finding: one problem (or fact worth knowing) with its fix, as doctor and the Alembic helper
report them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning", "info"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "error": 2}


@dataclass(frozen=True)
class Finding:
    """One problem (or fact worth knowing), with what to do about it."""

    code: str
    severity: Severity
    message: str
    fix: str
