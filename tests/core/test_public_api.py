"""The public namespace is curated: ``__all__`` lists exactly what ``observer`` exports."""

from __future__ import annotations
import __future__

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
