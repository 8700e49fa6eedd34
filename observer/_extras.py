"""Optional dependencies: a missing one is named with the extra that installs it."""

from __future__ import annotations

import argparse
import importlib
import os

from observer.settings import ConfigurationError


class MissingDependency(ConfigurationError):
    """A feature needs a package that is not installed; the message says which extra has it."""


def require(modules: tuple[str, ...], *, extra: str, feature: str) -> None:
    """Raise :class:`MissingDependency` unless every module in ``modules`` imports."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingDependency(
                f"{feature} needs the {module!r} package, which is not installed; install it "
                f"with: pip install 'pool-observer[{extra}]'"
            ) from None


def check_command(command: str, args: argparse.Namespace) -> None:
    """What an ``observer`` subcommand needs, given its arguments."""
    if command == "doctor":
        require(("greenlet", "asyncpg"), extra="sidecar", feature="observer doctor")
    elif command == "sidecar":
        url = (
            getattr(args, "database_url", None)
            or os.environ.get("OBSERVER_SIDECAR_DATABASE_URL")
            or os.environ.get("OBSERVER_DATABASE_URL")
        )
        if url:  # the server view; without a database it only serves the workers' metrics
            require(
                ("greenlet", "asyncpg"), extra="sidecar", feature="observer sidecar --database-url"
            )
    elif command == "demo":
        modules: tuple[str, ...] = ("fastapi", "uvicorn", "httpx", "greenlet")
        url = getattr(args, "database_url", None)
        if not url:
            modules += ("aiosqlite",)  # the embedded default database
        elif "+asyncpg" in url.split("://", 1)[0]:
            modules += ("asyncpg",)
        require(modules, extra="demo", feature="observer demo")
    elif command == "render":
        require(("yaml",), extra="monitoring", feature="observer render")
