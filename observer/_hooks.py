"""Never raise into the app: every hook is wrapped once, here; and work deferred out of hooks.

Pool events can run inside a garbage-collection finalizer (``reset -> detach -> close_detached``
for a connection nobody returned), in whatever context and thread happened to trigger the
collection, possibly while that thread holds a prometheus-client lock. Such hooks only append
to :attr:`Hooks.pending` (a lock-free ``deque.append``); :meth:`Hooks.drain` does the real work
later, from the sweeper thread, a scrape or a snapshot.
"""

from __future__ import annotations

import functools
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prometheus_client import Counter

from observer._logs import logger

P = ParamSpec("P")
R = TypeVar("R")


class Hooks:
    """Wraps hooks so their exceptions are counted and logged once, never raised."""

    def __init__(self, hook_errors: Counter) -> None:
        self._hook_errors = hook_errors
        self._children: dict[str, Counter] = {}
        self._logged: set[str] = set()
        self.pending: deque[tuple[Any, ...]] = deque()

    def _child(self, hook: str) -> Counter:
        child = self._children.get(hook)
        if child is None:
            child = self._children[hook] = self._hook_errors.labels(hook)
        return child

    def guard(self, hook: str, fn: Callable[P, R]) -> Callable[P, R | None]:
        """``fn`` that swallows its exceptions: counted in ``observer_hook_errors_total{hook}``."""
        self._child(hook)  # bound now, never inside a hook
        pending = self.pending
        report = self._report

        @functools.wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R | None:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                pending.append((report, hook, exc))
                return None

        return guarded

    def reporter(self, hook: str) -> Callable[[Exception], None]:
        """A lock-free ``report(exc)`` for a hook that catches its own exceptions (the hottest
        hooks do, to save :meth:`guard`'s extra call); counted like a guarded hook's."""
        self._child(hook)
        pending = self.pending
        report = self._report

        def failed(exc: Exception) -> None:
            pending.append((report, hook, exc))

        return failed

    def failed(self, hook: str, exc: Exception) -> None:
        """Record an exception caught by observer code outside :meth:`guard`."""
        self._child(hook)
        self.pending.append((self._report, hook, exc))

    def _report(self, hook: str, exc: Exception) -> None:
        """Count ``exc`` as ``hook``'s and log the first one. Never raises: a failing log sink
        (a structlog processor or the stream raising) is counted as ``hook="log"``."""
        self._child(hook).inc()
        if hook in self._logged:
            return
        self._logged.add(hook)
        frames = traceback.extract_tb(exc.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "unknown"
        try:
            # The exception's message is left out: a driver error can carry SQL parameters.
            logger.error(
                "observer.hook_error",
                hook=hook,
                error=type(exc).__name__,
                location=where,
                note="the app was not affected; further errors of this hook are only counted",
            )
        except Exception:
            self._child("log").inc()  # counted, not logged: logging is what fails

    def drain(self) -> None:
        """Run the work deferred out of hooks, in order. Safe to call from any thread; never
        raises."""
        pending = self.pending
        report = self._report
        while True:
            try:
                item = pending.popleft()
            except IndexError:
                return
            fn, *args = item
            try:
                fn(*args)
            except Exception as exc:  # a bug of ours; never let it stop the drain
                # ``==``, not ``is``: each ``self._report`` is a new bound method object
                if fn != report:
                    report("drain", exc)
