"""The background sweeper: a daemon thread that runs the observer's periodic work.

A thread, not an asyncio task: it keeps running while the event loop is blocked or the pool
is exhausted, works for sync apps, and survives a fork (gunicorn preload) by restarting in
the child.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

_running: weakref.WeakSet[Sweeper] = weakref.WeakSet()


class Sweeper:
    """Calls ``tick`` every ``interval`` seconds until stopped."""

    def __init__(self, tick: Callable[[], None], interval: float) -> None:
        self._tick = tick
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pool-observer-sweeper", daemon=True)
        self._thread.start()
        _running.add(self)

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        _running.discard(self)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(self._interval):
            self._tick()  # the tick guards itself

    def _after_fork(self) -> None:
        self._thread = None
        self.start()


def _restart_in_child() -> None:
    for sweeper in list(_running):
        sweeper._after_fork()


os.register_at_fork(after_in_child=_restart_in_child)
