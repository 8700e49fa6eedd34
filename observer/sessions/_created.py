"""Where each ORM session was created: ``Session.__init__`` wrapped while an observer captures
origins, since SQLAlchemy has no session-created event and the transaction's origin (its first
statement) is often another line, or another function (a FastAPI dependency creates the
session, the endpoint runs the statement)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from observer.sessions._origin import Origin, capture

CREATED: dict[int, Origin | None] = {}
"""id(session) -> where it was created, written by every ``Session.__init__`` while installed.

Kept here, never in the session's own ``__dict__`` (the app's object: nothing of the observer
goes in it). Each new session writes its own entry, so an id reused by a later session never
reads an earlier one's line. A session that never begins a transaction leaves its entry until
its id is reused; :data:`MAX_CREATED` bounds what such sessions can leave."""
MAX_CREATED = 10_000  # then the map starts over: a few sessions lose their creation line
_lock = threading.Lock()
_users = 0
_original: Callable[..., None] | None = None
_wrapper: Callable[..., None] | None = None


def _wrap(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: Session, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        # Never raise into the app: a failed capture only loses the line. (A plain try, not
        # contextlib.suppress: that is a context manager per session created.)
        try:
            if len(CREATED) >= MAX_CREATED:
                CREATED.clear()
            CREATED[id(self)] = capture()
        except Exception:
            pass

    return __init__


def install() -> None:
    """Wrap ``Session.__init__`` (once, for every observer that captures origins)."""
    global _users, _original, _wrapper
    with _lock:
        _users += 1
        if _original is None:
            _original = Session.__init__
            _wrapper = Session.__init__ = _wrap(_original)  # type: ignore[method-assign]


def uninstall() -> None:
    """Undo one :func:`install`; the last one puts ``Session.__init__`` back."""
    global _users, _original, _wrapper
    with _lock:
        if _users == 0:
            return
        _users -= 1
        if _users == 0:
            CREATED.clear()
        if _users == 0 and _original is not None:
            # Put back only our own wrapper: another library may have wrapped it since.
            if Session.__dict__.get("__init__") is _wrapper:
                Session.__init__ = _original  # type: ignore[method-assign]
            _original = _wrapper = None
