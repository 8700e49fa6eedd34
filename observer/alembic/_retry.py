"""When a migration that gave up on a lock is tried again, and the short error when it is not."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from observer.alembic._options import MigrationOptions
from observer.alembic._recorder import Attempt

if TYPE_CHECKING:
    from alembic.util import CommandError
else:
    try:
        from alembic.util import CommandError
    except ModuleNotFoundError:  # pragma: no cover - the alembic extra is missing
        CommandError = RuntimeError

FIRST_DELAY = 0.5
MAX_DELAY = 10.0


class Backoff:
    """Exponential backoff with jitter, bounded by ``max_attempts`` and ``retry_for`` seconds.

    The n-th pause is drawn between half and all of ``0.5 s * 2**(n-1)`` (at most 10 s): the
    app gets the table back between attempts, and several deploy jobs blocked by the same
    session do not all come back at once.
    """

    def __init__(
        self, options: MigrationOptions, rand: Callable[[], float] = random.random
    ) -> None:
        self.options = options
        self.rand = rand

    def delay(self, attempt: int, elapsed: float) -> float | None:
        """The pause before attempt ``attempt + 1``; None when there is none left (the
        attempts are used up, or the next one could not start within ``retry_for``)."""
        if attempt >= self.options.max_attempts:
            return None
        ceiling = min(MAX_DELAY, FIRST_DELAY * 2.0 ** (attempt - 1))
        pause = ceiling * (0.5 + 0.5 * self.rand())
        if elapsed + pause > self.options.retry_for:
            return None
        return pause


class MigrationError(CommandError):
    """A migration failed: one line saying which revision, how, and (for a lock) who blocked it.

    A subclass of Alembic's ``CommandError``, so ``alembic upgrade`` prints ``FAILED: <this>``
    instead of a traceback; the original exception is its ``__cause__``.
    """

    def __init__(self, attempt: Attempt, *, attempts: int, elapsed: float) -> None:
        self.outcome = attempt.outcome
        self.revision = attempt.revision
        self.direction = attempt.direction
        self.attempts = attempts
        where = (
            f"revision {attempt.revision} ({attempt.direction})"
            if attempt.revision
            else "the migration run"
        )
        if attempt.outcome == "lock_timeout":
            tries = f"{attempts} attempt{'s' if attempts > 1 else ''} in {elapsed:.1f}s"
            blocked = (
                attempt.wait.describe()
                if attempt.wait is not None
                else "(the blocker was not seen; see docs/runbooks.md)"
            )
            message = f"{where} gave up waiting for a lock after {tries}: {blocked}"
        else:
            message = f"{where} ended {attempt.outcome}: {attempt.error}"
        super().__init__(message)
