"""``observer demo``: an instrumented app under a bounded load, with leaks to find.

The app itself is :mod:`observer.demo.app`; ``add_arguments`` and ``run`` are the command.
"""

from __future__ import annotations

from observer.demo._cli import add_arguments, run

__all__ = ["add_arguments", "run"]
