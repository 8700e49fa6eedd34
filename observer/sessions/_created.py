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

from observer.sessions._origin import capture

ATTRIBUTE = "_pool_observer_created"  # on the session: where it was created (an Origin)
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
        try:  # noqa: SIM105
            self.__dict__[ATTRIBUTE] = capture()
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
        if _users == 0 and _original is not None:
            # Put back only our own wrapper: another library may have wrapped it since.
            if Session.__dict__.get("__init__") is _wrapper:
                Session.__init__ = _original  # type: ignore[method-assign]
            _original = _wrapper = None
