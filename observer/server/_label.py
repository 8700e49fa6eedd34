"""The ``server`` label: the PostgreSQL server a pool or a sidecar talks to, as ``host:port``.

The sidecar labels the server's settings with it, and the recording rules derive the same
label from each pool's default ``pool`` label (``driver://host:port/database``), so the fleet's
connection budget joins the server's limit ``on (server)``. Both sides use the two patterns
below, which mean the same in Python's ``re`` and in PromQL's ``label_replace`` (RE2, anchored
at both ends).
"""

from __future__ import annotations

import re
from typing import Final

from sqlalchemy.engine import URL

from observer._dsn import display_url

DEFAULT_PORT: Final = 5432
LABEL: Final = "server"
# driver://host:port/database -> host:port (several hosts: all of them, as written). A pool
# named by the app ("main"), a socket (no host) or an unreadable URL has no server.
FROM_POOL: Final = r"[A-Za-z][A-Za-z0-9+.-]*://([^/]+)/.*"
# A host without a port (a name, an IPv4 address or a bracketed IPv6 one) gets PostgreSQL's.
PORTLESS: Final = r"([^:\[\],/]+|\[[^\]]+\])"


def server_label(dsn: str | URL) -> str:
    """``host:port`` of the server ``dsn`` points to (the port defaulted to 5432); ``""`` when
    it names none (a Unix socket, a URL that cannot be read without guessing). Never a user,
    password or query parameter: it is read from :func:`observer._dsn.display_url`."""
    match = re.fullmatch(FROM_POOL, display_url(dsn))
    if match is None:
        return ""
    where = match.group(1)
    return f"{where}:{DEFAULT_PORT}" if re.fullmatch(PORTLESS, where) else where
