"""The leak log: every leak accounted for. The first leak of each origin and reason is always
logged on its own line, the next ones too while the rate limit allows; the rest are counted and
logged as one summary line per origin, reason and route when the sweeper next runs (also when
no further leak or request comes), so the lines' counts add up to the leak counter."""

from __future__ import annotations

import threading
from typing import Any

from observer._logs import RateLimiter, emit
from observer.attribution._scope import RequestScope

MAX_FIRST_ORIGINS = 1000  # (origin, reason) pairs remembered as logged; beyond, rate-limited

HINTS = {
    "garbage_collected": "the session was dropped without close(); use 'async with Session() as "
    "session' or close it in a finally block",
    "too_old": "a transaction has been open longer than leak_threshold_seconds; commit or close "
    "the session before slow work",
    "request_end": "the request finished while its session still held a transaction",
}


class LeakLog:
    """Logs leaks: one line each while allowed, else folded into the next summary."""

    def __init__(self, limiter: RateLimiter) -> None:
        self._limiter = limiter
        self._lock = threading.Lock()
        self._logged: set[tuple[str, str]] = set()  # (origin, reason) with a line of its own
        # (origin, reason, route) -> [leaks not logged yet, where the first was created]
        self._pending: dict[tuple[str, str, str], list[Any]] = {}

    def leak(
        self,
        scope: RequestScope | None,
        reason: str,
        route: str,
        origin: str | None,
        created_at: str | None,
        age: float,
    ) -> None:
        """One leak found now: a ``session.leak`` line, or one more in the next summary."""
        where = origin or "unknown"
        with self._lock:
            first = (where, reason) not in self._logged
            if first and len(self._logged) < MAX_FIRST_ORIGINS:
                self._logged.add((where, reason))
            else:
                first = False
        allowed = self._limiter.allow("session.leak")  # a first one uses the budget too
        if first or allowed:
            emit(
                "warning",
                "session.leak",
                scope,
                reason=reason,
                age_seconds=round(age, 3),
                route=route,
                origin=origin,
                created_at=created_at,
                hint=HINTS[reason],
            )
            return
        with self._lock:
            pending = self._pending.setdefault((where, reason, route), [0, created_at])
            pending[0] += 1

    def flush(self) -> None:
        """Log the leaks counted since the last flush: a ``session.leak_summary`` line per
        origin, reason and route, with their ``count``."""
        with self._lock:
            if not self._pending:
                return
            pending, self._pending = self._pending, {}
        for (origin, reason, route), (count, created_at) in pending.items():
            emit(
                "warning",
                "session.leak_summary",
                None,
                reason=reason,
                count=count,
                route=route,
                origin=origin,
                created_at=created_at,
                hint=HINTS[reason],
            )
