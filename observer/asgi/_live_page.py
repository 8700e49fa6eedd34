"""The live page: pools and open sessions right now, refreshing, for someone without Grafana.

Off by default (option ``live_page_path``): it shows routes and code locations, so serve it
only where /metrics would be acceptable too.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from observer._asgi_types import Receive, Scope, Send
from observer._types import Snapshot

SNAPSHOT_SUFFIX = "/snapshot.json"

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pool-observer: live</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
  table { border-collapse: collapse; min-width: 40em; }
  th, td { text-align: left; padding: .25em .8em; border-bottom: 1px solid #ddd; }
  th { background: #f3f3f3; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  tr.leak td { background: #ffd6d6; }
  tr.busy td { background: #fff3c4; }
  .muted { color: #777; }
  code { font-size: .95em; }
</style>
</head>
<body>
<h1>pool-observer</h1>
<div class="muted" id="updated">loading&hellip;</div>
<h2>Pools</h2>
<table id="pools"><thead><tr>
  <th>pool</th><th>size</th><th>max</th><th>in use</th><th>idle</th><th>overflow</th>
  <th>waiting</th></tr></thead><tbody></tbody></table>
<h2>Open sessions (oldest first)</h2>
<table id="sessions"><thead><tr>
  <th>age (s)</th><th>route</th><th>opened at</th><th>leak</th><th>request id</th>
</tr></thead><tbody></tbody></table>
<h2>Leaks so far</h2>
<table id="leaks"><thead><tr>
  <th>count</th><th>reason</th><th>route</th><th>opened at</th></tr></thead><tbody></tbody></table>
<script>
const SNAPSHOT = __SNAPSHOT_URL__;
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
    const response = await fetch(SNAPSHOT, {cache: "no-store"});
    const snap = await response.json();
    fill("pools", snap.pools, (r, p) => {
      if (p.waiting > 0 || (p.max_connections > 0 && p.checked_out >= p.max_connections))
        r.className = "busy";
      cell(r, p.name); cell(r, p.size, "num"); cell(r, p.max_connections, "num");
      cell(r, p.checked_out, "num"); cell(r, p.checked_in, "num"); cell(r, p.overflow, "num");
      cell(r, p.waiting, "num");
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
</script>
</body>
</html>
"""


class LivePage:
    """``GET path``: the page; ``GET path/snapshot.json``: ``snapshot()`` as JSON (the
    observer's :meth:`~observer.Observer.snapshot`)."""

    def __init__(self, snapshot: Callable[[], Snapshot], path: str) -> None:
        self.snapshot = snapshot
        self.path = path.rstrip("/") or "/"
        self.snapshot_path = self.path.rstrip("/") + SNAPSHOT_SUFFIX

    def handles(self, path: str) -> bool:
        return path in (self.path, self.path + "/", self.snapshot_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path") == self.snapshot_path:
            body = json.dumps(self.snapshot()).encode()
            content_type = b"application/json"
        else:  # the page fetches the snapshot next to itself, also behind a proxy's root_path
            url = str(scope.get("root_path", "")) + self.snapshot_path
            body = _PAGE.replace("__SNAPSHOT_URL__", json.dumps(url)).encode()
            content_type = b"text/html; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
