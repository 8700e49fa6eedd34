"""Database URLs shown to people and used as labels: location only, never a credential."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_plus

from sqlalchemy.engine import URL, make_url

UNPARSED = "<unparsed>"
MASK = "***"

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://(.*)\Z", re.DOTALL)
# A DNS name, a docker service name or an IPv4 address (ASCII only: no lookalikes).
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,252}[A-Za-z0-9_])?\Z")
_SOCKET_DIR = re.compile(r"/[A-Za-z0-9_.\-/]*\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
_USER = re.compile(r"[A-Za-z0-9_.\-]{1,63}\Z")
# Query keys whose values are credentials (libpq's password and sslpassword, and the like).
SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)
# libpq's "keyword = value" connection strings; a value is single-quoted or a bare word.
_KEYWORD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'(?=\s|\Z)", re.DOTALL)
_BARE = re.compile(r"((?:[^\s'\\]|\\.)*)(?=\s|\Z)", re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


@dataclass(frozen=True)
class _Location:
    """Where a DSN points: each part already checked, or ``None`` when it cannot be trusted."""

    backend: str
    hosts: tuple[tuple[str, int | None], ...] | None  # None: unparsed; () : no host (a socket)
    database: str | None
    user: str | None = None

    def render(self, *, user: bool) -> str:
        if not self.backend:
            return UNPARSED
        if self.hosts is None:
            return f"{self.backend}://{UNPARSED}"
        who = f"{self.user}@" if user and self.user else ""
        where = ",".join(_host_text(host) + (f":{p}" if p else "") for host, p in self.hosts)
        return f"{self.backend}://{who}{where}/{self.database or ''}"


def display_url(dsn: str | URL, *, user: bool = False) -> str:
    """``backend://host:port/database`` for people and labels (``user@`` too with ``user``).

    Never a password or a query parameter, whatever form ``dsn`` takes: a URL string, a
    :class:`~sqlalchemy.engine.URL`, several ``host:port`` pairs, or a libpq
    ``host=... dbname=...`` string. A location that cannot be read without guessing (a
    password with an unescaped ``@``, ``/``, ``?`` or ``#``, a port that is not a number, a host
    that is not a host name or an IP address) is shown as ``<unparsed>``.
    """
    return _locate(dsn).render(user=user)


def display_database(dsn: str | URL) -> str:
    """The database name of ``dsn`` for a label or a log field, ``<unparsed>`` when the URL
    cannot be read without guessing (then the name could hold part of a password)."""
    location = _locate(dsn)
    return UNPARSED if location.hosts is None else location.database or ""


def credentials(dsn: str | URL) -> list[str]:
    """Every credential ``dsn`` carries, as written and decoded, longest first: the password
    however the URL is split, and the values of secret-looking query parameters or keywords.
    For blanking out text that may repeat them (a driver's error message)."""
    found: set[str] = set()
    if isinstance(dsn, URL):
        found.add(str(dsn.password or ""))
        found.update(_secret_values(dsn.query.items()))
    elif _SCHEME.match(dsn.strip()):
        found.update(_url_credentials(dsn))
    else:
        found.update(_secret_values((key, value) for key, value in _keywords(dsn) or ()))
    variants = {form for value in found for form in (value, unquote(value), quote(value, safe=""))}
    return sorted((v for v in variants if len(v) >= 2), key=len, reverse=True)


def redact(text: str, dsn: str | URL) -> str:
    """``text`` with every credential of ``dsn`` replaced by ``***``."""
    for secret in credentials(dsn):
        text = text.replace(secret, MASK)
    return text


# -- reading a DSN ------------------------------------------------------------------------------


def _locate(dsn: str | URL) -> _Location:
    if isinstance(dsn, URL):
        return _from_sqlalchemy(dsn)
    text = dsn.strip()
    match = _SCHEME.match(text)
    if match is None:
        return _from_keywords(text)
    backend, rest = match.group(1).split("+", 1)[0], match.group(2)
    unparsed = _Location(backend, None, None)
    # Two "@": a password or a query value holds one, and no parser can tell where the
    # userinfo ends. Anything but one reading agreed by SQLAlchemy and RFC 3986 is a guess.
    ours = _from_rfc3986(backend, rest)
    if rest.count("@") > 1 or ours.hosts is None:
        return unparsed
    try:
        theirs = _from_sqlalchemy(make_url(text))
    except Exception:  # a port list SQLAlchemy cannot read (several hosts), not a URL at all
        theirs = unparsed
    if theirs.hosts is None or len(ours.hosts) > 1:
        # SQLAlchemy cannot read it (nor several hosts): ours only if the one "@" (if any)
        # ends the authority, so that no password can be split off into the host or path.
        return ours if "@" not in rest[_authority_end(rest) :] else unparsed
    if (ours.hosts, ours.database) != (theirs.hosts, theirs.database):
        return unparsed
    return ours


def _from_sqlalchemy(url: URL) -> _Location:
    """What SQLAlchemy parsed, if every part is a plausible host, port and database."""
    backend = url.get_backend_name()
    hosts = _hosts(url.host or "", url.port)
    database = url.database or None
    # With a password, an "@" in the query may be where the password really ended.
    query_text = " ".join(f"{k}={v}" for k, v in url.query.items())
    split_late = url.password is not None and "@" in query_text
    if hosts is None or split_late or not _plausible_database(database):
        return _Location(backend, None, None)
    return _Location(backend, hosts, database, _safe_user(url.username))


def _from_rfc3986(backend: str, rest: str) -> _Location:
    """The URL split as RFC 3986 does: the authority ends at the first ``/``, ``?`` or ``#``."""
    end = _authority_end(rest)
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hostport = authority.rpartition("@")
    username = unquote(userinfo.partition(":")[0]) if at else None
    path = re.split(r"[?#]", tail, maxsplit=1)[0]
    database = unquote(path[1:]) if path.startswith("/") else None
    hosts = _host_list(hostport)
    if hosts is None or not _plausible_database(database):
        return _Location(backend, None, None)
    return _Location(backend, hosts, database or None, _safe_user(username))


def _from_keywords(text: str) -> _Location:
    """A libpq connection string (``host=db port=5432 dbname=app user=u password=...``)."""
    pairs = _keywords(text)
    if not pairs:
        return _Location("", None, None)  # not a DSN at all: not even the backend is known
    values = dict(pairs)
    hosts_text = values.get("host") or values.get("hostaddr") or ""
    names = hosts_text.split(",") if hosts_text else []
    ports = values["port"].split(",") if values.get("port") else []
    if len(ports) == 1:
        ports *= max(len(names), 1)
    if (ports and len(ports) != max(len(names), 1)) or not all(_PORT.match(p) for p in ports):
        return _Location("postgresql", None, None)
    hosts = []
    for i, name in enumerate(names or ([""] if ports else [])):
        if name and not _valid_host(name):
            return _Location("postgresql", None, None)
        hosts.append((name, int(ports[i]) if ports else None))
    database = values.get("dbname")
    if not _plausible_database(database):
        return _Location("postgresql", None, None)
    return _Location("postgresql", tuple(hosts), database, _safe_user(values.get("user")))


def _keywords(text: str) -> list[tuple[str, str]] | None:
    """The ``keyword = value`` pairs of a libpq string, or ``None`` when it is not one."""
    pairs, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        key = _KEYWORD.match(text, pos)
        if key is None:
            return None
        value = _QUOTED.match(text, key.end()) or _BARE.match(text, key.end())
        if value is None:
            return None
        pairs.append((key.group(1).lower(), _ESCAPE.sub(r"\1", value.group(1))))
        pos = value.end()
    return pairs or None


def _authority_end(rest: str) -> int:
    """Where the authority of ``rest`` (the URL after ``scheme://``) ends, per RFC 3986."""
    return min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))


def _host_list(hostport: str) -> tuple[tuple[str, int | None], ...] | None:
    """``h1:5432,[::1]:5433`` -> ((h1, 5432), (::1, 5433)); ``None`` if any part is not one."""
    if hostport == "":
        return ()
    hosts = []
    for item in hostport.split(","):
        if item.startswith("["):
            host, bracket, port = item[1:].partition("]")
            if not bracket or (port and not port.startswith(":")):
                return None
            port = port[1:]
        else:
            host, _, port = item.partition(":")
        if not _valid_host(host) or (port and not _PORT.match(port)):
            return None
        hosts.append((host, int(port) if port else None))
    return tuple(hosts)


def _hosts(host: str, port: int | None) -> tuple[tuple[str, int | None], ...] | None:
    """SQLAlchemy's host (``h1,h2`` for several) and port, checked."""
    if host == "":
        return ((host, port),) if port else ()
    names = host.split(",")
    if not all(_valid_host(name) for name in names):
        return None
    return tuple((name, port if i == len(names) - 1 else None) for i, name in enumerate(names))


def _valid_host(host: str) -> bool:
    if _HOSTNAME.match(host):
        return True
    if _SOCKET_DIR.match(host):
        return True
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _host_text(host: str) -> str:
    if ":" in host:
        return f"[{host}]"
    if host.startswith("/"):
        return quote(host, safe="")  # libpq's URL form of a socket directory
    return host


def _plausible_database(database: str | None) -> bool:
    """A database name, not the rest of a password split at an unescaped ``@``."""
    return database is None or ("@" not in database and database.isprintable())


def _safe_user(user: str | None) -> str | None:
    return user if user is not None and _USER.match(user) else None


def _secret_values(items: Iterable[tuple[str, object]]) -> set[str]:
    found: set[str] = set()
    for key, value in items:
        if SECRET_KEY.search(key):
            values = value if isinstance(value, list | tuple) else [value]
            found.update(str(v) for v in values)
    return found


def _url_credentials(text: str) -> set[str]:
    """The password however the URL may be split, and secret-looking query values."""
    rest = text.split("://", 1)[1]
    found = set()
    for userinfo in (rest[: _authority_end(rest)].rpartition("@")[0], rest.rpartition("@")[0]):
        password = userinfo.partition(":")[2]
        found.update({password, password.partition("@")[0]})
    query = rest.partition("?")[2]
    for match in re.finditer(r"(?:^|&)([^&=]*)=([^&]*)", query):
        if SECRET_KEY.search(unquote_plus(match.group(1))):
            value, remainder = match.group(2), query[match.start(2) :]  # "&" unescaped in it
            found.update({value, unquote_plus(value), remainder})
    try:
        url = make_url(text)
    except Exception:  # not a URL SQLAlchemy reads: the splits above are all there is
        return found
    found.add(str(url.password or ""))
    found.update(_secret_values(url.query.items()))
    return found
