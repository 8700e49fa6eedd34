"""Where in the app's own code something happened: the first frame outside libraries."""

from __future__ import annotations

import os
import sys
import sysconfig
from types import CodeType, FrameType

# observer/ (this file is observer/sessions/_origin.py): every frame of the library is skipped
_PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "")
_LIBRARY_DIRS = tuple(
    {
        os.path.join(os.path.realpath(path), "")
        for key in ("stdlib", "platstdlib", "purelib", "platlib", "scripts")
        if (path := sysconfig.get_paths().get(key))
    }
    | {_PACKAGE_DIR}
)
# The demo app ships inside the package but is an app: its frames are origins.
_APP_DIRS = (os.path.join(_PACKAGE_DIR, "demo", ""),)
_MAX_DEPTH = 80

# id(code) -> is it app code? Bounded by the amount of code in the program. Keyed by id():
# hashing a code object hashes its constants again on every lookup (0.07-0.25 us each for
# SQLAlchemy's functions); _seen holds every code object classified, so no id is reused.
_is_app_code: dict[int, bool] = {}
_seen: list[CodeType] = []


class Origin(tuple[CodeType, int]):
    """A code location, captured as (code object, line) on the hot path (one tuple, no string)
    and formatted as ``file:line in function`` only when it is shown (a leak reported, a
    snapshot). Equal when the code object and line are."""

    __slots__ = ()

    @property
    def filename(self) -> str:
        return self[0].co_filename

    @property
    def lineno(self) -> int:
        return self[1]

    @property
    def function(self) -> str:
        return self[0].co_name

    def __str__(self) -> str:
        return display(self[0].co_filename, self[1], self[0].co_name)

    def __repr__(self) -> str:
        return f"Origin({str(self)!r})"


def display(filename: str, lineno: int, function: str) -> str:
    """How an origin is shown: ``file:line in function``, the file relative to the working
    directory when it is under it."""
    return f"{_display_path(filename)}:{lineno} in {function}"


def _display_path(filename: str) -> str:
    try:
        relative = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if relative.startswith("..") else relative


def _classify(code: CodeType) -> bool:
    filename = code.co_filename
    if filename.startswith("<"):  # <frozen ...>, <string>
        return False
    real = os.path.realpath(filename)
    if real.startswith(_APP_DIRS):
        return True
    if "site-packages" in real or "dist-packages" in real:
        return False
    return not real.startswith(_LIBRARY_DIRS)


def _search(frame: FrameType | None) -> Origin | None:
    depth = 0
    while frame is not None and depth < _MAX_DEPTH:
        code = frame.f_code
        app = _is_app_code.get(id(code))
        if app is None:
            app = _is_app_code[id(code)] = _classify(code)
            _seen.append(code)
        if app:
            return Origin((code, frame.f_lineno))
        frame = frame.f_back
        depth += 1
    return None


def capture() -> Origin | None:
    """The caller's first frame in app code, or ``None``.

    Under SQLAlchemy's asyncio layer the hook runs in a child greenlet whose frames are
    SQLAlchemy's own, ending at ``greenlet_spawn``; the app's ``await session.execute(...)``
    is in the parent greenlet, a few frames up. So the search starts there (walking the
    child's frames first cost ~0.3 us a frame), and falls back to the current stack.
    """
    greenlet = sys.modules.get("greenlet")
    if greenlet is not None:
        parent = greenlet.getcurrent().parent
        while parent is not None:
            found = _search(parent.gr_frame)
            if found is not None:
                return found
            parent = parent.parent
    return _search(sys._getframe(1))
