"""The library's structlog loggers and a rate limiter, so a leak storm cannot flood the logs.

Library code only gets loggers; configuring output is the app's business.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog

logger: Any = structlog.get_logger("pool_observer")


class RateLimiter:
    """Allow at most ``burst`` events per key in each ``window`` seconds; count what it drops."""

    def __init__(self, *, burst: int = 10, window: float = 60.0) -> None:
        self.burst = burst
        self.window = window
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        """Whether an event of ``key`` may be logged now."""
        now = time.monotonic()
        with self._lock:
            start, count = self._windows.get(key, (now, 0))
            if now - start >= self.window:
                start, count = now, 0
            if count >= self.burst:
                self.suppressed[key] = self.suppressed.get(key, 0) + 1
                self._windows[key] = (start, count)
                return False
            self._windows[key] = (start, count + 1)
            return True

    def take_suppressed(self, key: str) -> int:
        """How many events of ``key`` were dropped since the last call."""
        with self._lock:
            return self.suppressed.pop(key, 0)
