"""``observer doctor``: check a pool's settings against the PostgreSQL server it talks to, or
derive them from the fleet's history in Prometheus (``--prometheus``).

From Python: ``await check_engine(engine, ...)`` or ``check_sync_engine(engine, ...)`` return a
:class:`Report`. On the command line (``add_arguments`` and ``run``), the exit codes are:
0 no finding at or above ``--fail-on`` (default: warning), 1 findings,
2 usage error or the database (or Prometheus) could not be reached.
"""

from __future__ import annotations

from observer.doctor._cli import add_arguments, run
from observer.doctor._engine import check_engine, check_sync_engine
from observer.doctor._report import Report

__all__ = ["Report", "add_arguments", "check_engine", "check_sync_engine", "run"]
