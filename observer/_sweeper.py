"""The background sweeper: a daemon thread that runs the observer's periodic work.

A thread, not an asyncio task: it keeps running while the event loop is blocked or the pool
is exhausted, works for sync apps, and survives a fork (gunicorn preload) by restarting in
the child.

Idle, it allocates nothing: it sleeps in a timed acquire of a lock (``Event.wait`` allocates a
lock and more per call), and the tick it runs allocates nothing when there is no work. An
allocation on this thread could set off a garbage collection here, and SQLAlchemy's finalizer
of a leaked async connection would then run off the event loop (docs/reliability.md).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_running: weakref.WeakSet[Sweeper] = weakref.WeakSet()

# Idents of the threads the observer runs (the sweeper, the metrics port's), for the pool
# tracker's garbage-collection path: a set read by a plain membership test, lock-free.
_observer_threads: set[int] = set()


def on_observer_thread() -> bool:
    """Whether the caller runs on one of the observer's own threads."""
    return threading.get_ident() in _observer_threads


@contextmanager
def observer_thread() -> Iterator[None]:
    """Mark the current thread as one of the observer's while the block runs."""
    ident = threading.get_ident()
    _observer_threads.add(ident)
    try:
        yield
    finally:
        _observer_threads.discard(ident)


class Sweeper:
    """Calls ``tick`` every ``interval`` seconds until stopped."""

    def __init__(self, tick: Callable[[], None], interval: float) -> None:
        self._tick = tick
        self._interval = interval
        self._wake: threading.Lock | None = None  # held while running; stop() releases it
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        wake = self._wake = threading.Lock()
        wake.acquire()  # the thread's timed acquire of it is its sleep, until stop() releases it
        self._thread = threading.Thread(
            target=self._run, args=(wake,), name="pool-observer-sweeper", daemon=True
        )
        self._thread.start()
        _running.add(self)

    def stop(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and wake.locked():
            wake.release()
        thread, self._thread = self._thread, None
        _running.discard(self)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self, wake: threading.Lock) -> None:
        tick, interval = self._tick, self._interval
        with observer_thread():
            while not wake.acquire(True, interval):
                tick()  # the tick guards itself

    def _after_fork(self) -> None:
        self._thread = None
        self.start()


def _restart_in_child() -> None:
    for sweeper in list(_running):
        sweeper._after_fork()


os.register_at_fork(after_in_child=_restart_in_child)
