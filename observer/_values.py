"""Reading option values from text: ASCII numbers in a finite range, hosts, plain text, URLs."""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

T = TypeVar("T")

# ASCII digits only: int() and float() also read other digits and '1_000', float() 'inf', 'nan'.
DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
WHOLE = re.compile(r"[+-]?\d+", re.ASCII)
# Underscores too: docker compose service names have them, and resolve.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?", re.ASCII)
EXPECTED_URL = "expected postgresql://user:password@host:port/database"


def describe(low: float, high: float, *, unit: str = "", whole: bool = False) -> str:
    """``a whole number from 1 to 10`` or ``a number of seconds from 0.1 to 3600``."""
    kind = "a whole number" if whole else "a number"
    return f"{kind}{f' of {unit}' if unit else ''} from {_plain(low)} to {_plain(high)}"


def _plain(number: float) -> str:
    """3600000 (not 3.6e+06), 0.01."""
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def in_range(value: object, low: float, high: float, *, whole: bool = False) -> bool:
    """Whether ``value`` is a number (an int when ``whole``; never a bool) from low to high:
    NaN and infinities never are."""
    kinds = int if whole else (int, float)
    return not isinstance(value, bool) and isinstance(value, kinds) and low <= value <= high


def _fix(fix: str) -> str:
    return f"; {fix}" if fix else ""


def decimal(
    text: str, name: str, low: float, high: float, *, unit: str = "", fix: str = ""
) -> float:
    """The number ``text`` spells in ASCII, when from ``low`` to ``high``; else ValueError
    naming ``name``, the text and the range."""
    value = float(text) if DECIMAL.fullmatch(text.strip()) else None
    if not in_range(value, low, high):
        raise ValueError(
            f"{name} must be {describe(low, high, unit=unit)} (got {text!r}){_fix(fix)}"
        )
    return float(text)


def whole(text: str, name: str, low: int, high: int, *, unit: str = "", fix: str = "") -> int:
    """The whole number ``text`` spells in ASCII digits, when from ``low`` to ``high``."""
    value = int(text) if WHOLE.fullmatch(text.strip()) else None
    if not in_range(value, low, high, whole=True):
        expected = describe(low, high, unit=unit, whole=True)
        raise ValueError(f"{name} must be {expected} (got {text!r}){_fix(fix)}")
    return int(text)


def valid_host(host: object) -> bool:
    """An IP address (``0.0.0.0``, ``::``) or a DNS host name (``localhost``, ``db.internal``)."""
    if not isinstance(host, str):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOST_NAME.fullmatch(host) is not None
    return True


def host(text: str, name: str) -> str:
    """``text`` when it is an address to listen on or connect to; else ValueError."""
    if not valid_host(text):
        raise ValueError(
            f"{name} must be an IP address or a host name, such as 127.0.0.1, 0.0.0.0 or "
            f"localhost (got {text!r})"
        )
    return text


def plain(value: object) -> bool:
    """Printable ASCII: no NUL, no control character, nothing a server rewrites."""
    return isinstance(value, str) and value.isascii() and value.isprintable()


def application_name(text: str, name: str) -> str:
    """An ``application_name`` PostgreSQL keeps as given (else the app's connections and the
    tools looking for them in ``pg_stat_activity`` disagree)."""
    if not plain(text) or len(text) > 63:
        raise ValueError(
            f"{name} must be printable ASCII of at most 63 bytes, PostgreSQL's limit (got "
            f"{text!r}): PostgreSQL rewrites other characters and a NUL fails every connection"
        )
    return text


def identifier(text: str, name: str) -> str:
    """A plain SQL identifier of at most 63 bytes (a table name)."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", text, re.ASCII) is None:
        raise ValueError(
            f"{name} must be a table name of letters, digits and _ (at most 63) (got {text!r})"
        )
    return text


def database_url(text: str, name: str) -> URL:
    """The URL ``text`` spells, with a numeric port in range. Messages never repeat the text:
    it may hold a password."""
    try:
        url = make_url(text)
    except ArgumentError:
        raise ValueError(f"{name} is not a URL; {EXPECTED_URL}") from None
    except ValueError:  # SQLAlchemy's int() of the port
        raise ValueError(f"{name} has a port that is not a number; {EXPECTED_URL}") from None
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ValueError(f"{name} has port {url.port}, not 1-65535; {EXPECTED_URL}")
    if url.host is not None and not valid_host(url.host):
        raise ValueError(f"{name} has a host that is not a host name or IP address; {EXPECTED_URL}")
    return url


def argument(
    parse: Callable[..., T], name: str, *args: object, **kwargs: object
) -> Callable[[str], T]:
    """An argparse ``type=`` calling ``parse(text, name, ...)``: its ValueError becomes the
    option's one-line error."""

    def convert(text: str) -> T:
        try:
            return parse(text, name, *args, **kwargs)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = name
    return convert
