"""The live page: pools, open sessions and checked-out connections (executing or idle) right now,
refreshing, for someone without Grafana.

Off by default (option ``live_page_path``): it shows routes and code locations, so it asks for
``metrics_token`` like /metrics does (as ``Authorization: Bearer``, or for a browser as
``?token=`` on the page's URL, which the page then sends as the header), and every response
forbids caching, sniffing, framing, referrers and any script or style but its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from urllib.parse import parse_qsl

from observer._asgi_types import Receive, Scope, Send
from observer._types import Snapshot
from observer.metrics._exposition import CHALLENGE, authorized

SNAPSHOT_SUFFIX = "/snapshot.json"

_STYLE = """
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
  table { border-collapse: collapse; min-width: 40em; }
  th, td { text-align: left; padding: .25em .8em; border-bottom: 1px solid #ddd; }
  th { background: #f3f3f3; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  tr.leak td { background: #ffd6d6; }
  tr.busy td { background: #fff3c4; }
  tr.idle td { background: #dde8ff; }
  .muted { color: #777; }
  code { font-size: .95em; }
"""

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pool-observer: live</title>
__STYLE__
</head>
<body>
<h1>pool-observer</h1>
<div class="muted" id="updated">loading&hellip;</div>
<h2>Pools</h2>
<table id="pools"><thead><tr>
  <th>pool</th><th>size</th><th>max</th><th>in use</th><th>idle</th><th>overflow</th>
  <th>waiting</th></tr></thead><tbody></tbody></table>
<h2>Checked-out connections (longest held first)</h2>
<table id="connections"><thead><tr>
  <th>held (s)</th><th>state</th><th>for (s)</th><th>pool</th><th>route</th><th>request id</th>
  <th>sessions opened at</th></tr></thead><tbody></tbody></table>
<h2>Open sessions (oldest first)</h2>
<table id="sessions"><thead><tr>
  <th>age (s)</th><th>route</th><th>opened at</th><th>leak</th><th>request id</th>
</tr></thead><tbody></tbody></table>
<h2>Leaks so far</h2>
<table id="leaks"><thead><tr>
  <th>count</th><th>reason</th><th>route</th><th>opened at</th></tr></thead><tbody></tbody></table>
__SCRIPT__
</body>
</html>
"""

_SCRIPT = """
const SNAPSHOT = __SNAPSHOT_URL__;
// A token given as ?token= (a browser cannot send a header on its own) goes to the snapshot
// as a header, and leaves the address bar and the history at once.
const TOKEN = new URLSearchParams(location.search).get("token");
if (TOKEN !== null) history.replaceState(null, "", location.pathname);
const HEADERS = TOKEN === null ? {} : {"Authorization": "Bearer " + TOKEN};
function cell(row, value, cls) {
  const td = row.insertCell(); td.textContent = value === null ? "" : String(value);
  if (cls) td.className = cls;
}
function fill(id, rows, render) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  for (const item of rows) render(body.insertRow(), item);
  if (!rows.length) { const r = body.insertRow(); cell(r, "none", "muted"); }
}
async function refresh() {
  try {
    const response = await fetch(SNAPSHOT, {cache: "no-store", headers: HEADERS});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const snap = await response.json();
    fill("pools", snap.pools, (r, p) => {
      if (p.waiting > 0 || (p.max_connections > 0 && p.checked_out >= p.max_connections))
        r.className = "busy";
      cell(r, p.name); cell(r, p.size, "num"); cell(r, p.max_connections, "num");
      cell(r, p.checked_out, "num"); cell(r, p.checked_in, "num"); cell(r, p.overflow, "num");
      cell(r, p.waiting, "num");
    });
    fill("connections", snap.connections || [], (r, c) => {
      if (c.state === "idle") r.className = "idle";  // held with no statement running
      cell(r, c.held_seconds.toFixed(1), "num"); cell(r, c.state);
      cell(r, c.state_seconds.toFixed(1), "num"); cell(r, c.pool); cell(r, c.route);
      cell(r, c.request_id); cell(r, (c.session_origins || []).join(", "));
    });
    fill("sessions", snap.sessions, (r, s) => {
      if (s.leak) r.className = "leak";
      cell(r, s.age_seconds.toFixed(1), "num"); cell(r, s.route); cell(r, s.origin);
      cell(r, s.leak || ""); cell(r, s.request_id);
    });
    fill("leaks", snap.leaks, (r, l) => {
      cell(r, l.count, "num"); cell(r, l.reason); cell(r, l.route); cell(r, l.origin);
    });
    document.getElementById("updated").textContent =
      "live pools in this process: " + snap.live_pools + " - updated " +
      new Date().toLocaleTimeString();
  } catch (error) {
    document.getElementById("updated").textContent = "could not load the snapshot: " + error;
  }
}
refresh();
setInterval(refresh, 2000);
"""


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode()).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


_STYLE_HASH = _csp_hash(_STYLE)
_PAGE_WITH_STYLE = _PAGE.replace("__STYLE__", "<style>" + _STYLE + "</style>")
NO_CONTENT_POLICY = (
    "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The Content-Security-Policy of every response but the page: nothing may load or run."""
UNAUTHORIZED_BODY = (
    b"a bearer token is required: send Authorization: Bearer <metrics_token>, or open this "
    b"page with ?token=<metrics_token> in a browser\n"
)


def script_json(value: str) -> str:
    """``value`` as a JavaScript string literal safe inside ``<script>``: JSON, with ``<``,
    ``>``, ``&`` and the line separators U+2028/U+2029 escaped (no ``</script>``, no
    ``<!--``, no line break JavaScript sees and JSON does not)."""
    encoded = json.dumps(value, ensure_ascii=True)  # ensure_ascii escapes U+2028/U+2029 too
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        encoded = encoded.replace(raw, escaped)
    return encoded


def _page(snapshot_url: str) -> tuple[bytes, str]:
    """The page fetching ``snapshot_url``, and its Content-Security-Policy (which allows its own
    script and style only, by hash, and fetches from its own origin only)."""
    script = _SCRIPT.replace("__SNAPSHOT_URL__", script_json(snapshot_url))
    body = _PAGE_WITH_STYLE.replace("__SCRIPT__", "<script>" + script + "</script>")
    policy = (
        f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_STYLE_HASH}; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return body.encode(), policy


def query_token(scope: Scope) -> str | None:
    """The ``token`` query parameter of the request, if any (the browser's way in)."""
    raw = scope.get("query_string", b"")
    if not isinstance(raw, bytes) or b"token=" not in raw:
        return None
    for name, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if name == "token":
            return value
    return None


class LivePage:
    """``GET path``: the page; ``GET path/snapshot.json``: ``snapshot()`` as JSON (the
    observer's :meth:`~observer.Observer.snapshot`).

    With a ``token`` (``metrics_token``) both answer 401 unless the request carries it, as
    ``Authorization: Bearer <token>`` or as the ``token`` query parameter, each compared in
    constant time. The token is never logged nor written into the page. ``failed`` counts a
    snapshot that raised (the JSON is then a 503 with an error, never an exception)."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        path: str,
        *,
        token: str | None = None,
        failed: Callable[[Exception], None] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.path = path.rstrip("/") or "/"
        self.snapshot_path = self.path.rstrip("/") + SNAPSHOT_SUFFIX
        self._token = token
        self._failed = failed

    def handles(self, path: str) -> bool:
        return path in (self.path, self.path + "/", self.snapshot_path)

    def authorized(self, scope: Scope) -> bool:
        """Whether the request carries the token (always, without one)."""
        token = self._token
        if token is None:
            return True
        header = None
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                header = value.decode("latin-1")
        if header is not None:
            return authorized(header, token)
        given = query_token(scope)
        return given is not None and hmac.compare_digest(given.encode(), token.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "GET")
        policy = NO_CONTENT_POLICY
        extra: list[tuple[bytes, bytes]] = []
        if method not in ("GET", "HEAD"):
            status, body, content_type = 405, b"method not allowed\n", b"text/plain; charset=utf-8"
            extra.append((b"allow", b"GET, HEAD"))
        elif not self.authorized(scope):
            status, body, content_type = 401, UNAUTHORIZED_BODY, b"text/plain; charset=utf-8"
            extra.append((b"www-authenticate", CHALLENGE.encode()))
        elif scope.get("path") == self.snapshot_path:
            status, body = self._snapshot_json()
            content_type = b"application/json"
        else:  # the page fetches the snapshot next to itself, also behind a proxy's root_path
            status, content_type = 200, b"text/html; charset=utf-8"
            body, policy = _page(str(scope.get("root_path", "")) + self.snapshot_path)
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-security-policy", policy.encode()),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    def _snapshot_json(self) -> tuple[int, bytes]:
        try:
            return 200, json.dumps(self.snapshot(), default=str).encode()
        except Exception as exc:  # snapshot() never raises; a callable of someone else's may
            if self._failed is not None:
                self._failed(exc)
            return 503, b'{"error": "the snapshot could not be read"}'
