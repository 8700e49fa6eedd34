"""Request ids: ``X-Request-ID`` when usable, else 32 hex digits (a random per-process half and a
counter: a uuid4 costs an ``os.urandom`` call per request)."""

from __future__ import annotations

import itertools
import os
from typing import Any


def request_id(scope: Any) -> str:
    """``X-Request-ID`` when printable and at most 128 characters, else a generated id."""
    for key, value in scope.get("headers", ()):
        if key == b"x-request-id":
            text: str = value.decode("latin-1")
            if 0 < len(text) <= 128 and text.isprintable():
                return text
            break
    return f"{_id_prefix}{next(_id_counter):016x}"


# Generated request ids: 32 hex digits, a random per-process half and a counter (a uuid4 costs
# an os.urandom call per request). The random half is drawn again in a forked child.
_id_prefix = os.urandom(8).hex()
_id_counter = itertools.count(1)


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count(1)


os.register_at_fork(after_in_child=_new_id_prefix)
