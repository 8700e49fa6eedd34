"""A small client of the Prometheus HTTP API: instant and range queries, bounded, secrets hidden."""

from __future__ import annotations

import base64
import http.client
import json
import math
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from observer._values import valid_host

TOKEN_ENV = "OBSERVER_PROMETHEUS_TOKEN"
# A 7-day range at a 10-minute step is ~1000 points a series: a few MB for a large fleet.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_MASK = "***"
_FIX = "give the base URL of the Prometheus HTTP API, e.g. --prometheus http://prometheus:9090"

Labels = dict[str, str]
T = TypeVar("T")


class PrometheusError(Exception):
    """Prometheus could not answer a query; the message names the option and the fix, and
    never a credential."""


@dataclass(frozen=True)
class Prometheus:
    """Where the API is (``base``: scheme, host, port and path, without credentials), how to
    authenticate, and how long one request may take."""

    base: str
    shown: str  # what output names: the URL with its userinfo masked
    timeout: float
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)  # masked in every message

    def query(self, expr: str, at: float | None = None) -> list[tuple[Labels, float]]:
        """The instant vector of ``expr`` (at ``at``, a Unix time; now when None)."""
        params = {"query": expr, **({} if at is None else {"time": f"{at:.3f}"})}
        data = self._get("/api/v1/query", params)

        def vector() -> list[tuple[Labels, float]]:
            if data["resultType"] != "vector":
                raise TypeError(data["resultType"])
            return [(_labels(r["metric"]), _number(r["value"][1])) for r in data["result"]]

        return self._parsed("/api/v1/query", vector)

    def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[tuple[Labels, list[tuple[float, float]]]]:
        """The range of ``expr``: per series, (Unix time, value) pairs."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        data = self._get("/api/v1/query_range", params)

        def matrix() -> list[tuple[Labels, list[tuple[float, float]]]]:
            return [
                (_labels(r["metric"]), [(float(t), _number(v)) for t, v in r["values"]])
                for r in data["result"]
            ]

        return self._parsed("/api/v1/query_range", matrix)

    def label_values(self, label: str, match: str, start: float, end: float) -> list[str]:
        """Values of ``label`` on the series ``match`` selects from ``start`` to ``end``."""
        params = {"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        path = f"/api/v1/label/{urllib.parse.quote(label)}/values"
        values = self._get(path, params)

        def names() -> list[str]:
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise TypeError(type(values).__name__)  # the API's label values are strings
            return sorted(_printable(v) for v in values)

        return self._parsed(path, names)

    def _parsed(self, path: str, parse: Callable[[], T]) -> T:
        """``parse()`` of an answer; one not shaped as the API's is a PrometheusError, not a
        traceback."""
        try:
            return parse()
        except (KeyError, TypeError, ValueError, IndexError, AttributeError):
            raise PrometheusError(
                f"--prometheus {self.shown} did not answer {path} as the Prometheus HTTP API "
                f"does; {_FIX}"
            ) from None

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        """One GET of the API; the ``data`` of a successful answer, else PrometheusError."""
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(
            url, headers={"Accept": "application/json", **self.headers}
        )
        try:
            refused, body = _fetch(request, self.timeout)
        except _Late:
            raise PrometheusError(
                f"--prometheus {self.shown} did not answer {path} within {self.timeout:g} s "
                "(--connect-timeout); check that it is the Prometheus HTTP API, or raise "
                "--connect-timeout"
            ) from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusError(
                f"--prometheus {self.shown} could not be reached ({self._clean(reason)}); check "
                f"its host and port, or raise --connect-timeout; {_FIX}"
            ) from None
        if refused is not None:
            self._check_status(refused, path)
        return self._data(body, path)

    def _check_status(self, exc: urllib.error.HTTPError, path: str) -> None:
        """PrometheusError for an HTTP error status, but the API's own errors (a JSON body)."""
        if exc.code in {401, 403}:
            raise PrometheusError(
                f"--prometheus {self.shown} refused the query (HTTP {exc.code}); give its "
                f"credentials as https://user:password@host/ or a bearer token in ${TOKEN_ENV}"
            )
        if 300 <= exc.code < 400:
            raise PrometheusError(
                f"--prometheus {self.shown} redirected {path} (HTTP {exc.code}) to "
                f"{_location(exc)}; doctor follows no redirect (the credentials would go "
                "along): give the URL it redirects to"
            )
        if exc.code not in {400, 422, 503}:  # the API's own errors come with a JSON body
            raise PrometheusError(
                f"--prometheus {self.shown} answered HTTP {exc.code} to {path}; {_FIX}"
            )

    def _data(self, body: bytes, path: str) -> Any:
        if len(body) > MAX_RESPONSE_BYTES:
            raise PrometheusError(
                f"--prometheus {self.shown} sent more than {MAX_RESPONSE_BYTES >> 20} MiB for "
                f"{path}; narrow --job or shorten --range"
            )
        try:
            answer = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested deeper than Python's
            answer = None
        if not isinstance(answer, dict) or "status" not in answer:
            raise PrometheusError(
                f"--prometheus {self.shown} did not answer as the Prometheus HTTP API does "
                f"({path}); {_FIX}"
            )
        if answer["status"] != "success":
            error = self._clean(str(answer.get("error", "no reason given")))
            raise PrometheusError(f"--prometheus {self.shown} refused a query: {error}")
        if "data" not in answer:
            raise PrometheusError(
                f"--prometheus {self.shown} did not answer as the Prometheus HTTP API does "
                f"({path}: a success without data); {_FIX}"
            )
        return answer["data"]

    def _clean(self, reason: object) -> str:
        """An error text without the URL's credentials or the token."""
        text = str(reason)
        for secret in (*self.secrets, *self.headers.values()):
            text = text.replace(secret, _MASK) if secret else text
        return _printable(text.splitlines()[0]) if text else text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib would send the Authorization header along, to
    whatever host the answer names."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirect)


class _Late(Exception):
    """No whole answer within the timeout."""


def _fetch(
    request: urllib.request.Request, timeout: float
) -> tuple[urllib.error.HTTPError | None, bytes]:
    """(the HTTP error status, if any; the body) of one request, read within ``timeout`` in
    all, else :class:`_Late`. The socket's timeout bounds each read only: a server sending a
    byte now and then would hold doctor as long as it kept sending. The reading thread is
    left behind when late (a daemon: it ends with the server, or with the process)."""
    outcome: list[tuple[urllib.error.HTTPError | None, bytes] | Exception] = []

    def fetch() -> None:
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                outcome.append((None, response.read(MAX_RESPONSE_BYTES + 1)))
        except urllib.error.HTTPError as exc:
            try:
                outcome.append((exc, exc.read(MAX_RESPONSE_BYTES + 1)))
            except Exception as error:  # the error's body broke off
                outcome.append(error)
        except Exception as exc:
            outcome.append(exc)

    reader = threading.Thread(target=fetch, name="observer-doctor-prometheus", daemon=True)
    reader.start()
    reader.join(timeout)
    if not outcome:
        raise _Late
    result = outcome[0]
    if isinstance(result, Exception):
        raise result
    return result


def _location(exc: urllib.error.HTTPError) -> str:
    """Where a redirect points, without its query or credentials."""
    try:
        parts = urllib.parse.urlsplit(exc.headers.get("Location", "") if exc.headers else "")
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "an unreadable location"
    where = f"{parts.scheme}://{host}{f':{port}' if port else ''}" if host else ""
    return (where + parts.path) or "an unnamed location"


def _labels(metric: object) -> Labels:
    """A series' labels, as strings."""
    if not isinstance(metric, dict):
        raise TypeError(type(metric).__name__)
    return {str(k): _printable(str(v)) for k, v in metric.items()}


def _printable(text: str) -> str:
    """``text`` with its control characters escaped (``\\x1b``): what Prometheus sends goes to
    a terminal, where an escape sequence would clear the screen or retitle the window."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _number(text: str) -> float:
    """A sample value as Prometheus spells it ("NaN", "+Inf" too)."""
    value = float(text)
    return value if math.isfinite(value) else math.nan


_NOT_URL = "--prometheus must be an http(s) URL"


def _split(text: str) -> tuple[urllib.parse.SplitResult, str, int | None]:
    """The parts of the URL ``text``, its host and port; ValueError saying what is wrong,
    never repeating ``text`` (it may hold a password)."""
    text = text.strip()
    if not text.isprintable() or re.search(r"\s", text):
        raise ValueError(
            f"{_NOT_URL} without spaces or control characters (percent-encode them); {_FIX}"
        )
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # an unclosed '['
        raise ValueError(
            f"{_NOT_URL}: its host is unreadable (an IPv6 address goes in brackets: "
            f"http://[::1]:9090); {_FIX}"
        ) from None
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"{_NOT_URL}; {_FIX}")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = 0
    if port == 0:
        raise ValueError(f"{_NOT_URL}: its port is not a number from 1 to 65535; {_FIX}")
    host = parts.hostname or ""
    if not valid_host(_ascii(host)):
        raise ValueError(f"{_NOT_URL}: its host is not a host name or IP address; {_FIX}")
    if not parts.path.isascii():
        raise ValueError(
            f"{_NOT_URL}: its path has characters other than ASCII (percent-encode them); {_FIX}"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"--prometheus takes no query or fragment; {_FIX}")
    return parts, host, port


def _ascii(host: str) -> str:
    """An international host name as DNS spells it (punycode); empty when it cannot be one."""
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def connect(text: str, *, timeout: float, environ: Mapping[str, str]) -> Prometheus:
    """The API ``text`` names: an http(s) URL, its userinfo (if any) sent as basic auth and
    masked in output; ``$OBSERVER_PROMETHEUS_TOKEN`` sent as a bearer token. ValueError naming
    ``--prometheus`` for a URL that cannot be one, never repeating a credential."""
    parts, host, port = _split(text)
    netloc = host if ":" not in host else f"[{host}]"
    netloc += f":{port}" if port else ""
    base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    headers: dict[str, str] = {}
    secrets: list[str] = []
    shown = base
    if parts.username is not None or parts.password is not None:
        user = urllib.parse.unquote(parts.username or "")
        secret = urllib.parse.unquote(parts.password or "")
        pair = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {pair}"
        secrets += [user, secret]
        shown = base.replace("://", f"://{_MASK}@", 1)
    token = environ.get(TOKEN_ENV)
    if token is not None:
        value = token.strip()
        if not value or re.search(r"\s", value) or not (value.isprintable() and value.isascii()):
            # An HTTP header carries ASCII only: http.client failed on it, "could not be reached"
            raise ValueError(
                f"${TOKEN_ENV} is set but is not a token (empty, or with blanks, control or "
                "non-ASCII characters): set it to the bearer token, or unset it"
            )
        if headers:
            raise ValueError(
                f"--prometheus has a user and password and ${TOKEN_ENV} is set: give one of them"
            )
        headers["Authorization"] = f"Bearer {token.strip()}"
        secrets.append(token.strip())
    return Prometheus(base, shown, timeout, headers, tuple(s for s in secrets if len(s) > 2))
