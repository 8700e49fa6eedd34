"""Where the demo's leaking routes drop their sessions: the demo's own plumbing, not one of the
bugs it shows.

A session dropped without ``close()`` sits in a reference cycle, so the garbage collector
reclaims it, and its connection, whenever a collection happens to start. Under load that is
often inside another request's SQLAlchemy call, in a greenlet: SQLAlchemy's finalizer then puts
the connection's record back in the pool and *awaits* the close of the leaked connection, and a
checkout in that window takes the record while the finalizer will check it in again. The pool
then hands one connection to two requests (docs/reliability.md, "SQLAlchemy's async double
handout"); on SQLite that shows as "Cannot operate on a closed database." and "no active
connection" with a traceback, on PostgreSQL as asyncpg's "another operation is in progress". A
real app with these bugs has that race too; the demo is there to show the leaks, not to trip the
race at random.

So the leaking routes still drop their sessions unclosed, but hand each one to
:class:`LeakedSessions` as they return (no await in between: the route must be done with it).
Its task lets go of each one ``HOLD`` seconds later and runs the collector from a plain task of
the event loop, outside any greenlet: there SQLAlchemy's ``terminate()`` force-closes the
connection without awaiting, so the finalizer returns the record once, in one step no checkout
can interleave with. Meanwhile the leak holds its connection, as it does until the collector
finds it in a real app, so the leaking routes still top the report's culprits; and the session
is still dropped open and garbage-collected before ``request_end_grace_seconds`` (1 s) after its
response, so the observer reports the same leaks, with the same reason (``garbage_collected``),
routes and lines.

A full collection walks every object of the process (about 100,000 here: 30-80 ms on a busy
2-core machine), so the objects alive when serving starts are frozen (``gc.freeze()``) until it
stops: each collection then walks only the objects created since.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections import deque
from time import monotonic

HOLD = 0.5  # seconds a leaked session keeps its connection after its route returned
TICK = 0.05  # seconds between two looks for sessions held long enough


class LeakedSessions:
    """Holds each leaked session ``hold`` seconds, then drops it and runs the collector."""

    def __init__(self, hold: float = HOLD) -> None:
        self.hold = hold
        self._held: deque[tuple[float, object]] = deque()  # (when dropped, session), oldest first
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._held)

    def drop(self, session: object) -> None:
        """A route leaks ``session``: it is reclaimed ``hold`` seconds from now."""
        self._held.append((monotonic(), session))

    def collect(self, *, due_only: bool = False) -> int:
        """Let go of the held sessions (``due_only``: those held ``hold`` seconds) and collect
        them now; the number dropped. Call it from a plain task or synchronous code, never from
        inside a SQLAlchemy call (a greenlet)."""
        cutoff = monotonic() - self.hold if due_only else float("inf")
        dropped = 0
        while self._held and self._held[0][0] <= cutoff:
            self._held.popleft()  # a session outside a cycle is finalized here, others below
            dropped += 1
        if dropped:
            gc.collect()
        return dropped

    async def _run(self, tick: float) -> None:
        while True:
            await asyncio.sleep(tick)
            self.collect(due_only=True)

    def start(self, tick: float = TICK) -> None:
        """Collect every ``tick`` seconds while the app serves (from its lifespan)."""
        if self._task is None:
            gc.collect()
            gc.freeze()
            self._task = asyncio.create_task(self._run(tick), name="demo-leaked-sessions")

    async def stop(self) -> None:
        """Stop the task, collect what is left and unfreeze the objects :meth:`start` froze."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.collect()
        if task is not None:
            gc.unfreeze()
