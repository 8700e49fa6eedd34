"""Migration metrics keep earlier runs: the textfile and the Pushgateway group add up."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from observer.alembic import MigrationError
from tests.helpers.alembic_project import config, events, migrate, raw

pytestmark = pytest.mark.postgres


class _Group:
    """A collector: one pushed group's families, with the group's labels (as the Pushgateway
    exposes them)."""

    def __init__(self, body: bytes, labels: dict[str, str]) -> None:
        self.body = body
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        for family in text_string_to_metric_families(self.body.decode()):
            out = Metric(family.name, family.documentation, family.type)
            for s in family.samples:
                out.add_sample(s.name, {**self.labels, **s.labels}, s.value)
            yield out


class _Pushgateway(BaseHTTPRequestHandler):
    """The part of a Pushgateway a migration uses: PUT a group, GET /metrics."""

    groups: ClassVar[dict[str, bytes]] = {}

    def do_PUT(self) -> None:
        self.groups[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:
        registry = CollectorRegistry(auto_describe=False)
        for path, body in self.groups.items():
            parts = path.removeprefix("/metrics/").split("/")
            registry.register(_Group(body, dict(zip(parts[::2], parts[1::2], strict=True))))
        payload = generate_latest(registry)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def pushgateway() -> Iterator[str]:
    """The stand-in Pushgateway's URL."""
    _Pushgateway.groups.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pushgateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _value(exposition: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def _gateway(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


async def _run_blocked(cfg: Any, database: str) -> BaseException | None:
    """One `alembic upgrade head` while another session holds a lock on items."""
    blocker = await raw(database)
    await blocker.execute("BEGIN")
    await blocker.fetch("SELECT * FROM items LIMIT 1")
    try:
        await migrate(cfg, "upgrade", "head")
    except MigrationError as exc:
        return exc
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    return None


@pytest.mark.promtool
def test_two_failed_runs_in_a_row_count_two_in_the_textfile_the_pushgateway_and_increase(
    project: Path, database: str, tmp_path: Path, pushgateway: str, promtool: str
) -> None:
    """Two runs that give up on a lock, each a fresh registry like a fresh process: the
    textfile and the Pushgateway group show lock_timeout 1, then 2 (each run adds to what the
    previous left); a third run that succeeds keeps them and adds its successes. Fed to
    Prometheus as scraped, SQLAlchemyAlembicMigrationFailed counts the two failures."""
    from tests.monitoring.shipped import ALERTS

    textfile = tmp_path / "alembic.prom"
    options = {
        "lock_timeout": 0.2,
        "max_attempts": 1,
        "textfile": str(textfile),
        "pushgateway": pushgateway,
    }
    asyncio.run(migrate(config(project, observer_options=options), "upgrade", "0001"))
    seen: list[tuple[float | None, float | None]] = []
    labels = {"direction": "upgrade", "outcome": "lock_timeout"}
    for _ in range(2):
        with capture_logs() as logs:
            error = asyncio.run(_run_blocked(config(project, observer_options=options), database))
        assert isinstance(error, MigrationError)
        assert events(logs, "alembic.metrics_history_unavailable") == []
        seen.append(
            (
                _value(textfile.read_text(), "alembic_migrations_total", **labels),
                _value(_gateway(pushgateway), "alembic_migrations_total", job="alembic", **labels),
            )
        )
    assert seen == [(1.0, 1.0), (2.0, 2.0)]

    asyncio.run(migrate(config(project, observer_options=options), "upgrade", "head"))
    content = textfile.read_text()
    success = {"direction": "upgrade", "outcome": "success"}
    assert _value(content, "alembic_migrations_total", **success) == 2.0  # 0001, then 0002
    assert _value(content, "alembic_migrations_total", **labels) == 2.0
    assert _value(content, "alembic_migration_duration_seconds_count", **labels) == 2.0
    assert _value(content, "alembic_migration_running") == 0.0
    stamps = {
        revision: _value(
            content, "alembic_migration_last_timestamp_seconds", revision=revision, **success
        )
        for revision in ("0001", "0002")
    }
    assert all(stamp is not None and stamp > 0 for stamp in stamps.values())  # both runs' kept
    gateway = _gateway(pushgateway)
    assert _value(gateway, "alembic_migrations_total", job="alembic", **success) == 2.0
    assert list(_Pushgateway.groups) == [f"/metrics/job/alembic/database/{database}"]

    # Scraped every minute: 0 for 70 minutes, then each run's value for 10 minutes.
    first, second = (int(a or 0) for a, _ in seen)
    series = (
        f'alembic_migrations_total{{job="alembic", database="{database}", '
        'direction="upgrade", outcome="lock_timeout"}'
    )
    description = (
        f"2 Alembic migration run(s) on database {database} (job alembic) ended lock_timeout "
        "(upgrade) in the last 1h: the deploy's schema change is not applied; read the run's "
        "alembic.migration.* lines (they name the blocker of a lock timeout)."
    )
    cases = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": series, "values": f"0x70 {first}x10 {second}x30"},
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "90m",
                        "alertname": "SQLAlchemyAlembicMigrationFailed",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "job": "alembic",
                                    "database": database,
                                    "direction": "upgrade",
                                    "outcome": "lock_timeout",
                                },
                                "exp_annotations": {
                                    "summary": "An Alembic migration run failed or gave up "
                                    "waiting for a lock.",
                                    "description": description,
                                    "runbook_url": "https://github.com/pool-observer/"
                                    "pool-observer/blob/main/docs/runbooks.md"
                                    "#sqlalchemyalembicmigrationfailed",
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "history-test.yaml"
    path.write_text(yaml.safe_dump(cases))
    result = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unreadable_history_is_logged_and_the_run_goes_on(project: Path, tmp_path: Path) -> None:
    """A textfile that is not an exposition is reported once (alembic.metrics_history_
    unavailable) and replaced by this run's values; the migration succeeds."""
    textfile = tmp_path / "alembic.prom"
    textfile.write_text("this is { not an exposition\n")
    cfg = config(project, observer_options={"textfile": str(textfile)})
    with capture_logs() as logs:
        asyncio.run(migrate(cfg, "upgrade", "head"))
    problems = events(logs, "alembic.metrics_history_unavailable")
    assert [(e["sink"], e["target"]) for e in problems] == [("textfile", str(textfile))]
    success = {"direction": "upgrade", "outcome": "success"}
    assert _value(textfile.read_text(), "alembic_migrations_total", **success) == 2.0
