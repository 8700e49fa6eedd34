"""``observer doctor --prometheus`` against bad input: URLs and tokens it cannot use, and a local
server answering what no Prometheus would. Each is one line on stderr, exit 2, within the
timeout, never a traceback or a credential."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pytest

from observer.cli import main

USER, PASSWORD = "doctor", "Pr0m-Secret-pw"
TOKEN_ENV = "OBSERVER_PROMETHEUS_TOKEN"
# What each path of the server answers (status, body); "drip" sends a byte every 0.2 s.
ANSWERS: dict[str, tuple[int, bytes]] = {
    "no-data": (200, b'{"status": "success"}'),
    "deep": (200, b"[" * 100_000),
    "deep-data": (200, b'{"status": "success", "data": ' + b"[" * 100_000 + b"}"),
    "not-names": (200, b'{"status": "success", "data": [1, null, {"a": 1}]}'),
}
# The API's own error (422), with terminal escapes in its text.
ESCAPES = (422, b'{"status": "error", "error": "bad \\u001b[2J\\u001b]0;owned\\u0007 query"}')


class _Answers(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        mode = self.path.split("/")[1]
        if mode == "drip":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(100):  # 20 s in all
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            return
        if mode == "1e308":
            status, body = _plausible(self.path)
        else:
            status, body = ESCAPES if mode == "escapes" else ANSWERS[mode]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _plausible(path: str) -> tuple[int, bytes]:
    """Answers shaped as the API's, of job "api" and pool "p", every value 1e308."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
    data: object = ["api"]
    series = {"pool": "p", "instance": "app:8000", "le": "+Inf"}
    if "/query_range" in path:
        start, end = float(query["start"][0]), float(query["end"][0])
        values = [[start + (end - start) * k / 10, "1e308"] for k in range(10)]
        data = {"resultType": "matrix", "result": [{"metric": series, "values": values}]}
    elif "/query" in path:
        data = {"resultType": "vector", "result": [{"metric": series, "value": [0, "1e308"]}]}
    return 200, json.dumps({"status": "success", "data": data}).encode()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``http://doctor:<password>@127.0.0.1:<port>``: paths name the answer (ANSWERS)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{USER}:{PASSWORD}@127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def doctor(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["doctor", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_clean_line(err: str) -> None:
    assert err.endswith("\n"), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err, err
    assert PASSWORD not in err, err


@pytest.mark.parametrize("mode", list(ANSWERS))
def test_an_answer_not_shaped_as_the_api_is_one_line(
    server: str, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A success without its data, JSON nested deeper than Python parses, label values that
    are no strings: one line saying to give the API's base URL (were a KeyError, a
    RecursionError traceback, and "pools of several jobs (1, None, {'a': 1})")."""
    code, out, err = doctor(capsys, "--prometheus", f"{server}/{mode}")
    assert (code, out) == (2, ""), err
    _one_clean_line(err)
    assert "did not answer" in err, err
    assert "give the base URL of the Prometheus HTTP API" in err, err


def test_a_server_sending_a_byte_now_and_then_is_cut_at_the_timeout(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--connect-timeout bounds each whole answer, not each read: a server dripping a byte
    every 0.2 s held doctor for as long as it kept dripping."""
    started = time.monotonic()
    code, out, err = doctor(capsys, "--prometheus", f"{server}/drip", "--connect-timeout", "1")
    took = time.monotonic() - started
    assert (code, out) == (2, ""), err
    _one_clean_line(err)
    assert took < 5, took
    assert "did not answer /api/v1/label/job/values within 1 s (--connect-timeout)" in err, err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"http://{USER}:{PASSWORD}@[::1", "--prometheus must be an http(s) URL: its host is "
         "unreadable (an IPv6 address goes in brackets: http://[::1]:9090)"),
        (f"http://{USER}:{PASSWORD}@127.0.0.1:0", "--prometheus must be an http(s) URL: its port "
         "is not a number from 1 to 65535"),
        ("http://127.0.0.1:99999", "its port is not a number from 1 to 65535"),
        ("http://prom etheus:9090", "--prometheus must be an http(s) URL without spaces or control "
         "characters (percent-encode them)"),
        ("http://127.0.0.1:1/prom etheus", "without spaces or control characters"),
        (f"http://{USER}:{PASSWORD}@127.0.0.1:1/\u00e9t\u00e9", "its path has characters other "
         "than ASCII (percent-encode them)"),
        ("http://prom_$etheus:9090", "its host is not a host name or IP address"),
    ],
)  # fmt: skip
def test_a_url_doctor_cannot_ask_says_why_before_connecting(
    url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unclosed IPv6 bracket (was a bare "Invalid IPv6 URL"), port 0 (was dropped from the
    URL shown, then "connection refused" on port 80), a space or a non-ASCII path (was "could
    not be reached" quoting the whole query): one line saying what to fix."""
    code, out, err = doctor(capsys, "--prometheus", url)
    assert (code, out) == (2, ""), err
    _one_clean_line(err)
    assert message in err, err
    assert "could not be reached" not in err, err


def test_a_token_no_http_header_can_carry_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token with non-ASCII characters (a copy from a rich-text page) was sent, failed in
    http.client, and read "could not be reached (ordinal not in range(256))"."""
    monkeypatch.setenv(TOKEN_ENV, "\uff54\uff4f\uff4b\uff45\uff4e-0123456789")
    code, out, err = doctor(capsys, "--prometheus", "http://127.0.0.1:1")
    assert (code, out) == (2, ""), err
    _one_clean_line(err)
    assert f"${TOKEN_ENV} is set but is not a token" in err, err
    assert "non-ASCII" in err, err
    assert "\uff54" not in err, err


def test_a_range_starting_with_a_dash_says_how_to_give_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--range -5m``: argparse takes -5m for an option and said only "expected one
    argument"; the error says how to pass it, and that value then gets --range's own error."""
    code, out, err = doctor(capsys, "--prometheus", "http://127.0.0.1:1", "--range", "-5m")
    assert (code, out) == (2, ""), err
    _one_clean_line(err)
    assert err == (
        "observer doctor: error: argument --range: expected one argument (a value that starts "
        "with '-' goes after '=': --range=VALUE)\n"
    ), err
    code, out, err = doctor(capsys, "--prometheus", "http://127.0.0.1:1", "--range=-5m")
    assert (code, out) == (2, ""), err
    assert "--range must be a Prometheus duration from 15m to 366d" in err, err


def test_values_no_pool_can_have_are_one_line(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Prometheus answering 1e308 checkouts a second (finite, so kept): the sizing overflowed
    ("cannot convert float infinity to integer", a traceback)."""
    code, out, err = doctor(capsys, "--prometheus", f"{server}/1e308", "--range", "1h")
    assert (code, out) == (2, ""), err
    _one_clean_line(err)
    assert "for pool 'p' of --job 'api': no pool holds that many" in err, err


def test_terminal_escapes_in_an_answer_are_shown_not_run(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The API's error text went to the terminal as sent: an ESC sequence in it cleared the
    screen or retitled the window. Control characters are shown escaped."""
    code, out, err = doctor(capsys, "--prometheus", f"{server}/escapes")
    assert (code, out) == (2, ""), err
    _one_clean_line(err)
    assert err.endswith("refused a query: bad \\x1b[2J\\x1b]0;owned\\x07 query\n"), err
