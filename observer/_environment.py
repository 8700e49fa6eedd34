"""The ``OBSERVER_*`` environment variables the project reads, and the error for any other."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

PREFIX = "OBSERVER_"
# Families owned by a command; each checks its own (the library lets them through).
OWNED_PREFIXES = {
    "OBSERVER_SIDECAR_": "observer sidecar",
    "OBSERVER_DEMO_": "observer demo",
    "OBSERVER_ALEMBIC_": "observer.alembic.run_migrations()",
    "OBSERVER_TEST_": "the test suite",
}
# Read by more than one command, or by the test suite outside its OBSERVER_TEST_ family.
SHARED = frozenset(
    {
        "OBSERVER_DATABASE_URL",  # observer doctor and observer sidecar
        "OBSERVER_PROMETHEUS_TOKEN",  # observer doctor --prometheus: a bearer token for the API
        "OBSERVER_CHAOS_SCALE",  # tests/chaos
        "OBSERVER_CHAOS_REPORT",
        "OBSERVER_SOAK_SECONDS",
        "OBSERVER_SOAK_CONCURRENCY",
        "OBSERVER_SOAK_ARMS",
        "OBSERVER_KEEP_SCREENSHOT",  # tests/asgi/test_live_page.py
        "OBSERVER_SQLA_SUITE_CACHE",  # scripts/sqla-suite: where SQLAlchemy's sdist is kept
    }
)


def unknown_variable(
    environ: Mapping[str, str], known: Iterable[str], *, prefix: str = PREFIX, owner: str
) -> str | None:
    """The error for the first variable under ``prefix`` that is neither in ``known`` nor in
    a family another command owns, or ``None``: a misspelled option must not be ignored."""
    known = sorted(set(known))
    allowed = set(known) | (SHARED if prefix == PREFIX else set())
    owned = tuple(p for p in OWNED_PREFIXES if p.startswith(prefix) and p != prefix)
    for name in sorted(environ):
        if not name.startswith(prefix) or name in allowed or name.startswith(owned):
            continue
        hint = difflib.get_close_matches(name, [*known, *sorted(allowed - set(known))], n=1)
        suggestion = f"; did you mean {hint[0]}?" if hint else ""
        families = "".join(
            f"; {p}* belong to {o}" for p, o in OWNED_PREFIXES.items() if p.startswith(owned)
        )
        return (
            f"unknown environment variable {name}{suggestion} ({owner} reads {', '.join(known)}"
            f"{families}); fix its name or unset it"
        )
    return None
