"""``observer doctor --prometheus`` on a real Prometheus serving a backfilled history whose right
answer is known (tests/doctor/history.py), behind basic auth; and its bad inputs."""

from __future__ import annotations

import asyncio
import http.server
import json
import math
import shutil
import threading
import time
from collections.abc import Iterator

import asyncpg
import pytest

from observer.cli import main
from tests.doctor.history import JOB, WORKERS_A, A, Truth, openmetrics, serve_history
from tests.helpers import PG_HOST, PG_PORT, PG_USER, require
from tests.helpers.processes import free_port

pytestmark = [pytest.mark.promtool, pytest.mark.slow]

TRUTH = Truth()
USER, PASSWORD = "doctor", "Pr0m-Secret-pw"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on the history, which ended a minute ago; basic auth required.
    Yields its URL without credentials."""
    promtool, prometheus_bin = shutil.which("promtool"), shutil.which("prometheus")
    require(promtool is not None and prometheus_bin is not None, "prometheus is not installed")
    assert promtool is not None
    assert prometheus_bin is not None
    work = tmp_path_factory.mktemp("history")
    end = time.time() // 30 * 30 - 60
    history = openmetrics(TRUTH, end)
    with serve_history(history, work, promtool, prometheus_bin, (USER, PASSWORD)) as url:
        yield url


def _with_auth(url: str, password: str = PASSWORD) -> str:
    return url.replace("http://", f"http://{USER}:{password}@")


def doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``observer doctor`` in-process; returns (exit code, stdout, stderr)."""
    code = main(["doctor", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _near(got: float, want: float) -> bool:
    """Within 10 % of the known answer."""
    return abs(got - want) <= 0.1 * abs(want)


def test_recommended_sizes_match_the_known_answer(
    prometheus: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The busiest process (instance A, 2 workers, 20 checkouts/s + 0.2 timed out, each held
    0.5 s) needs 10.1 connections on average (Little's law): pool_size 13 (x 1.25), bursts
    of 10.1 + 3 sqrt(10.1) = 19.6 -> 25 connections (x 1.25), so max_overflow 12; every hold
    falls in the (0.25, 0.5] bucket, p99 0.4975 s -> pool_timeout 1.5 s (3 x). The sidecar's
    series say 100 - 3 = 97 connections: 2 replicas x 2 workers x 25 = 100 do not fit, 1 does."""
    monkeypatch.delenv("OBSERVER_DATABASE_URL", raising=False)
    code, out, err = doctor(
        capsys, "--prometheus", _with_auth(prometheus), "--job", JOB, "--range", "3h", "--json"
    )
    report = json.loads(out)
    assert (code, err, report["exit_code"]) == (1, "", 1)
    (pool,) = report["pools"]
    load = TRUTH.concurrency
    burst = max(load + 3 * math.sqrt(load), TRUTH.max_checked_out + TRUTH.max_waiting)
    p99 = 0.25 + (0.5 - 0.25) * 0.99
    want = {
        "pool_size": math.ceil(1.25 * load),
        "max_overflow": math.ceil(1.25 * burst) - math.ceil(1.25 * load),
        "pool_timeout": math.ceil(3 * p99 * 10) / 10,
    }
    assert want == {"pool_size": 13, "max_overflow": 12, "pool_timeout": 1.5}
    for name, value in want.items():
        assert _near(pool["recommended"][name], value), (name, pool["recommended"], value)
    peak = pool["peak"]
    assert (peak["instance"], peak["workers"]) == (A, WORKERS_A)
    assert _near(peak["arrival_rate"], TRUTH.arrival_rate), peak
    assert _near(peak["timeout_rate"], TRUTH.timeouts_per_process), peak
    assert _near(peak["hold_seconds"], TRUTH.hold_seconds), peak
    assert _near(peak["concurrency"], load), peak
    assert _near(pool["observed"]["hold_p99_seconds"], p99)
    assert pool["current"] == {"pool_size": 5, "max_connections": 10}
    assert (report["job"], report["replicas"], report["workers"]) == (JOB, 2, 2)
    assert report["idle_pools"] == ["reports"]
    assert [r["route"] for r in report["routes"]] == ["/orders/{id}", "/health"]
    assert report["server"] == {
        "max_connections": 100, "reserved": 3, "available": 97,
        "source": "the sidecar's pg_settings_max_connections",
    }  # fmt: skip
    assert report["largest_replicas"] == 97 // (2 * 25) == 1
    assert [f["code"] for f in report["findings"]] == [
        "fleet_exceeds_server_limit", "checkout_timeouts_in_range", "pool_smaller_than_peak",
    ]  # fmt: skip
    assert report["prometheus"] == prometheus.replace("http://", "http://***@")
    assert PASSWORD not in out


def test_the_text_report_explains_each_number(
    prometheus: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --json: each recommended number with the arithmetic behind it, the server's room,
    the findings; --fail-on error still fails on the fleet that does not fit."""
    monkeypatch.delenv("OBSERVER_DATABASE_URL", raising=False)
    code, out, err = doctor(
        capsys,
        "--prometheus",
        _with_auth(prometheus),
        "--job",
        JOB,
        "--range",
        "3h",
        "--fail-on",
        "error",
    )
    assert (code, err) == (1, "")
    for line in [
        "pool 'main': pool_size=13 max_overflow=12 pool_timeout=1.5 (per process)",
        "Little's law: 20.2/s x 0.5 s = 10.1 connections in use on average",
        "pool_size=13: 10.1 x 1.25 headroom, rounded up",
        "max_overflow=12: bursts reach 19.6 connections (10.1 + 3 x sqrt(10.1) for random "
        "arrivals)",
        "pool_timeout=1.5: 3 x the p99 hold (0.49",  # 0.4975 s, give or take a rounding
        ") = 1.49 s: a waiting checkout gets a connection within one p99 hold",
        "max_connections 100 - 3 reserved = 97 (from the sidecar's pg_settings_max_connections)",
        "at most 1 replica(s)",
        "ERROR    fleet_exceeds_server_limit:",
        "3 problem(s), 0 note(s).",
    ]:  # fmt: skip
        assert line in out, (line, out)
    assert PASSWORD not in out


@pytest.mark.postgres
def test_with_the_database_url_the_server_limits_come_from_the_database(
    prometheus: str, pg_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With DATABASE_URL, max_connections and the reserved slots are the database's own, and the
    largest replica count is computed from them."""

    async def limits() -> tuple[int, int]:
        conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=pg_database)
        try:
            rows = await conn.fetch(
                "SELECT name, setting FROM pg_settings WHERE name IN ('max_connections', "
                "'superuser_reserved_connections', 'reserved_connections')"
            )
        finally:
            await conn.close()
        found = {r["name"]: int(r["setting"]) for r in rows}
        reserved = found["superuser_reserved_connections"] + found.get("reserved_connections", 0)
        return found["max_connections"], reserved

    most, reserved = asyncio.run(limits())
    url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{pg_database}"
    code, out, err = doctor(
        capsys, url, "--prometheus", _with_auth(prometheus), "--job", JOB, "--range", "3h", "--json"
    )
    report = json.loads(out)
    assert err == ""
    assert report["server"] == {
        "max_connections": most, "reserved": reserved, "available": most - reserved,
        "source": "the database",
    }  # fmt: skip
    assert report["largest_replicas"] == (most - reserved) // (2 * 25)
    exceeds = most - reserved < 2 * 2 * 25
    assert ("fleet_exceeds_server_limit" in [f["code"] for f in report["findings"]]) is exceeds
    assert code == 1  # the timeouts and the small pool, at least


def _one_line(err: str) -> None:
    assert err.count("\n") == 1, err
    assert err.startswith("observer doctor: "), err
    assert "Traceback" not in err
    assert PASSWORD not in err


def test_an_unknown_job_names_the_jobs_there(
    prometheus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--job with no pool metrics: exit 2, one line naming the job and the jobs that have them;
    --json says it as JSON on stdout too."""
    code, out, err = doctor(
        capsys, "--prometheus", _with_auth(prometheus), "--job", "nope", "--range", "3h", "--json"
    )
    assert code == 2
    _one_line(err)
    assert "--job 'nope': Prometheus at http://***@127.0.0.1:" in err
    assert err.rstrip().endswith("has no pool metrics for that job; jobs with them: api, worker")
    assert json.loads(out) == {
        "prometheus": prometheus.replace("http://", "http://***@"),
        "error": err.removeprefix("observer doctor: ").rstrip("\n"),
        "exit_code": 2,
    }


def test_without_job_doctor_asks_which_of_the_jobs(
    prometheus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two jobs have pool metrics: no guess, one line listing them and naming --job."""
    code, out, err = doctor(capsys, "--prometheus", _with_auth(prometheus), "--range", "3h")
    assert (code, out) == (2, "")
    _one_line(err)
    assert err.rstrip().endswith(
        "over the last 3h has pools of several jobs (api, worker); choose one with --job"
    ), err


def test_a_wrong_password_is_refused_without_showing_it(
    prometheus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prometheus answers 401: one line saying how to give credentials; neither password shown."""
    code, out, err = doctor(capsys, "--prometheus", _with_auth(prometheus, "Wr0ng-pass-word"))
    assert (code, out) == (2, "")
    _one_line(err)
    assert (
        "refused the query (HTTP 401); give its credentials as https://user:password@host/" in err
    )
    assert "Wr0ng-pass-word" not in err


def test_an_unreachable_prometheus_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening: exit 2, the URL without its password, what to check."""
    port = free_port()
    code, out, err = doctor(capsys, "--prometheus", f"http://{USER}:{PASSWORD}@127.0.0.1:{port}")
    assert (code, out) == (2, "")
    _one_line(err)
    assert err.startswith(
        f"observer doctor: --prometheus http://***@127.0.0.1:{port} could not be reached ("
    ), err


@pytest.mark.postgres
def test_a_server_that_does_not_speak_http_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """PostgreSQL's port instead of Prometheus': it answers no HTTP; one line, exit 2."""
    code, out, err = doctor(capsys, "--prometheus", f"http://127.0.0.1:{PG_PORT}")
    assert (code, out) == (2, "")
    _one_line(err)
    assert err.startswith(
        f"observer doctor: --prometheus http://127.0.0.1:{PG_PORT} could not be reached ("
    ), err


def test_a_url_that_is_not_the_api_says_what_to_give(
    prometheus: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The UI's path instead of the API's base: one line asking for the base URL."""
    code, out, err = doctor(capsys, "--prometheus", _with_auth(prometheus) + "/graph")
    assert (code, out) == (2, "")
    _one_line(err)
    assert (
        "give the base URL of the Prometheus HTTP API, e.g. --prometheus http://prometheus:9090"
        in err
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prometheus", "http://127.0.0.1:1", "--pool-size", "5"],
         "--pool-size describes the app for the settings check; with --prometheus, doctor reads "
         "it from the fleet's metrics: drop --pool-size"),
        (["--prometheus", "http://127.0.0.1:1", "--workers", "4"], "drop --workers"),
        (["--prometheus", "http://127.0.0.1:1", "--fail-on", "drift"],
         "--fail-on drift needs the migration scripts, not --prometheus"),
        (["postgresql://app@127.0.0.1:1/app", "--job", "api"],
         "--job goes with --prometheus URL: give both, or drop --job"),
        (["--prometheus", "ftp://prom:9090"], "--prometheus must be an http(s) URL; give the base"),
        (["--prometheus", "http://prom:9090/?x=1"], "--prometheus takes no query or fragment"),
        (["--prometheus", "http://prom:port"], "--prometheus must be an http(s) URL"),
    ],
)  # fmt: skip
def test_options_that_do_not_go_together_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Options of the settings check with --prometheus, --job without it, a URL that is not
    http(s): exit 2 before any connection, one line naming the option and the fix."""
    code, out, err = doctor(capsys, *argv)
    assert (code, out) == (2, "")
    _one_line(err)
    assert message in err, err


def test_a_token_and_a_password_together_are_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """$OBSERVER_PROMETHEUS_TOKEN set, and a password in the URL: which one? An error, not a
    guess; an empty token is an error too (an unset shell variable), neither shown."""
    monkeypatch.setenv("OBSERVER_PROMETHEUS_TOKEN", "tok-123456789abcdef")
    code, out, err = doctor(capsys, "--prometheus", f"http://{USER}:{PASSWORD}@127.0.0.1:1")
    assert (code, out) == (2, "")
    _one_line(err)
    assert "has a user and password and $OBSERVER_PROMETHEUS_TOKEN is set: give one of them" in err
    monkeypatch.setenv("OBSERVER_PROMETHEUS_TOKEN", " ")
    code, out, err = doctor(capsys, "--prometheus", "http://127.0.0.1:1")
    assert (code, out) == (2, "")
    assert "$OBSERVER_PROMETHEUS_TOKEN is set but is not a token" in err
    assert "tok-123456789abcdef" not in err


def test_a_redirect_is_not_followed_so_the_credentials_stay(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An API that redirects elsewhere: doctor does not follow (urllib would send the
    Authorization header to the other host); one line naming where it points, exit 2."""
    seen: list[str] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    elsewhere = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Elsewhere)
    target = f"http://127.0.0.1:{elsewhere.server_address[1]}"

    class Redirects(Elsewhere):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"{target}{self.path}")
            self.end_headers()

    redirecting = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirects)
    threads = [
        threading.Thread(target=s.serve_forever, daemon=True) for s in (elsewhere, redirecting)
    ]
    for thread in threads:
        thread.start()
    try:
        url = f"http://{USER}:{PASSWORD}@127.0.0.1:{redirecting.server_address[1]}"
        code, out, err = doctor(capsys, "--prometheus", url)
    finally:
        for server in (elsewhere, redirecting):
            server.shutdown()
            server.server_close()
    assert (code, out, seen) == (2, "", [])
    _one_line(err)
    assert (
        f"redirected /api/v1/label/job/values (HTTP 302) to {target}/api/v1/label/job/values;"
        in err
    )
    assert "doctor follows no redirect (the credentials would go along)" in err
