"""Reading pool settings from SQLAlchemy pools, defensively (no database needed)."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool, Pool, QueuePool, StaticPool

from observer.doctor._pool_checks import PoolSettings, pool_settings_of


@pytest.mark.parametrize(
    ("poolclass", "kwargs", "expected"),
    [
        (
            QueuePool,
            {"pool_size": 7, "max_overflow": 3, "pool_recycle": 600, "pool_timeout": 4},
            PoolSettings("QueuePool", 7, 3, 600.0, 4.0, False),
        ),
        (NullPool, {"pool_pre_ping": True}, PoolSettings("NullPool", None, 0, None, None, True)),
        (StaticPool, {}, PoolSettings("StaticPool", 1, 0, None, None, False)),
    ],
)
def test_pool_settings_of_each_pool_class(
    poolclass: type[Pool], kwargs: dict[str, float], expected: PoolSettings
) -> None:
    """Size, overflow, recycle, timeout and pre-ping come from the pool; NullPool has no size."""
    engine = create_engine("postgresql+psycopg://u@127.0.0.1:1/x", poolclass=poolclass, **kwargs)
    assert pool_settings_of(engine.pool) == expected
    assert expected.max_connections == (
        None if expected.pool_size is None else expected.pool_size + expected.max_overflow
    )


def test_unreadable_private_attributes_fall_back_to_defaults() -> None:
    """A pool whose private attributes raise (a future SQLAlchemy) still gives settings."""

    class Odd(QueuePool):
        @property
        def _recycle(self) -> float:  # type: ignore[override]
            raise RuntimeError("gone")

        @_recycle.setter
        def _recycle(self, value: float) -> None:
            pass

    engine = create_engine("postgresql+psycopg://u@127.0.0.1:1/x", poolclass=Odd, pool_size=2)
    settings = pool_settings_of(engine.pool)
    assert (settings.pool_class, settings.pool_size, settings.pool_recycle) == ("Odd", 2, None)
