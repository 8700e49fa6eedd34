"""Where the demo's leaking routes drop their sessions: the demo's own plumbing, not one of the
bugs it shows.

A session dropped without ``close()`` sits in a reference cycle, so the garbage collector
reclaims it, and its connection, whenever a collection happens to start. Under load that is
often inside another request's SQLAlchemy call, in a greenlet: SQLAlchemy's finalizer then puts
the connection's record back in the pool and *awaits* the close of the leaked connection, and a
checkout in that window takes the record while the finalizer will check it in again. The pool
then hands one connection to two requests (docs/reliability.md, "SQLAlchemy's async double
handout"); on SQLite that shows as "Cannot operate on a closed database." and "no active
connection" with a traceback. A real app with these bugs has that race too; the demo is there
to show the leaks, not to trip the race at random.

So the leaking routes still drop their sessions unclosed, but hand each one to
:class:`LeakedSessions` as they return (no await in between: the route must be done with it).
Its task lets go of them a moment later and runs the collector from a plain task of the event
loop, outside any greenlet: there SQLAlchemy's ``terminate()`` force-closes the connection
without awaiting, so the finalizer returns the record once, in one step no checkout can
interleave with. The sessions are still dropped open and garbage-collected, well within
``request_end_grace_seconds`` of their response, so the observer reports the same leaks, with
the same reason (``garbage_collected``), routes and lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc

INTERVAL = 0.1  # seconds between two looks; far below request_end_grace_seconds (1 s)


class LeakedSessions:
    """Holds each leaked session until :meth:`collect` drops them all and runs the collector."""

    def __init__(self) -> None:
        self._held: list[object] = []
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._held)

    def drop(self, session: object) -> None:
        """A route leaks ``session``: it is reclaimed at the next :meth:`collect`."""
        self._held.append(session)

    def collect(self) -> int:
        """Let go of the held sessions and collect them now; the number dropped. Call it from a
        plain task or synchronous code, never from inside a SQLAlchemy call (a greenlet)."""
        dropped = len(self._held)
        self._held.clear()  # a session outside a cycle is finalized here, the others just below
        gc.collect()
        return dropped

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._held:
                self.collect()

    def start(self, interval: float = INTERVAL) -> None:
        """Collect every ``interval`` seconds while the app serves (from its lifespan)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(interval), name="demo-leaked-sessions")

    async def stop(self) -> None:
        """Stop the task and collect what is left."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.collect()
