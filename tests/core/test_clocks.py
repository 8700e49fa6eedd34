"""Durations come from the monotonic clock bound at import, which a test's ``freeze_time``
cannot replace (freezegun patches module attributes that are ``time`` functions)."""

from __future__ import annotations

import time
from collections.abc import Callable

from freezegun import freeze_time
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import QueuePool
from structlog.testing import capture_logs

from observer import Observer
from tests.helpers import hook_errors, sample

POOL = "pool"


def test_hold_histogram_is_right_under_freeze_time(
    make_observer: Callable[..., Observer],
) -> None:
    """A connection held 0.2 s (real time) while the test's clock is frozen is observed once,
    with a hold of 0.2 s or a little more, not 0 (nor the frozen date's epoch seconds)."""
    engine = create_engine("sqlite://", poolclass=QueuePool)
    obs = make_observer(sweep_interval_seconds=3600)
    obs.watch(engine, name=POOL)
    try:
        with freeze_time("2023-01-01"), engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            time.sleep(0.2)  # freezegun leaves sleep alone
        obs.flush()
        hold = "sqlalchemy_pool_connection_hold_seconds"
        assert sample(obs.registry, f"{hold}_count", pool=POOL) == 1.0
        held = sample(obs.registry, f"{hold}_sum", pool=POOL)
        assert held is not None
        assert 0.2 <= held < 2.0
        assert hook_errors(obs.registry) == 0.0
    finally:
        engine.dispose()


def test_leak_age_is_right_under_freeze_time(make_observer: Callable[..., Observer]) -> None:
    """A session opened and found too old while the test's clock is frozen is reported once,
    as too_old, with the real age (0.3 s or a little more) in the log line."""
    engine = create_engine("sqlite://", poolclass=QueuePool)
    obs = make_observer(leak_threshold_seconds=0.1, sweep_interval_seconds=3600)
    obs.watch(engine, name=POOL)
    try:
        with capture_logs() as logs, freeze_time("2023-01-01"):
            session = Session(engine)
            session.execute(text("SELECT 1"))
            time.sleep(0.3)
            obs.sessions.check_age()
            session.close()
        leaks = "sqlalchemy_orm_session_leaks_total"
        assert sample(obs.registry, leaks, reason="too_old", route="none") == 1.0
        ages = [e["age_seconds"] for e in logs if e["event"] == "session.leak"]
        assert len(ages) == 1
        assert 0.3 <= ages[0] < 2.0
        assert hook_errors(obs.registry) == 0.0
    finally:
        engine.dispose()
