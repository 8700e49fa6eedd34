"""Leaks counted by the app line that began their transaction, with a bounded label set."""

from __future__ import annotations

import threading

from prometheus_client import Counter

from observer.metrics._families import OTHER_ORIGIN, UNKNOWN_ORIGIN


class LeakOrigins:
    """``sqlalchemy_orm_session_leak_origins_total``: at most ``max_origins`` distinct lines
    (plus ``unknown`` and ``other``). Runs once per leak, never per session: the line is
    formatted by the caller only when a leak is counted."""

    def __init__(self, counter: Counter, *, max_origins: int) -> None:
        self._counter = counter
        self._max = max_origins
        self._lock = threading.Lock()
        self._lines: set[str] = set()  # the origin label values given out so far

    def label(self, origin: str | None) -> str:
        """The label value a leak from ``origin`` (``None``: not known) is counted under."""
        if origin is None:
            return UNKNOWN_ORIGIN
        if origin in self._lines:
            return origin
        with self._lock:  # leaks are found on the event loop and on the sweeper's thread
            if origin in self._lines or len(self._lines) < self._max:
                self._lines.add(origin)
                return origin
        return OTHER_ORIGIN

    def count(self, origin: str | None, reason: str) -> str:
        """One leak of ``reason`` from ``origin``; the label value it was counted under."""
        label = self.label(origin)
        self._counter.labels(label, reason).inc()
        return label
