"""The options of run_migrations(): keyword arguments over OBSERVER_ALEMBIC_* variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from observer._environment import unknown_variable
from observer.settings import ENV_PREFIX, ConfigurationError

DEFAULT_LOCK_TIMEOUT = 5.0
_PREFIX, _OWNER = ENV_PREFIX + "ALEMBIC_", "run_migrations()"
ENV = {
    "lock_timeout": ENV_PREFIX + "ALEMBIC_LOCK_TIMEOUT",
    "statement_timeout": ENV_PREFIX + "ALEMBIC_STATEMENT_TIMEOUT",
    "textfile": ENV_PREFIX + "ALEMBIC_TEXTFILE",
    "pushgateway": ENV_PREFIX + "ALEMBIC_PUSHGATEWAY",
}


@dataclass(frozen=True, kw_only=True)
class MigrationOptions:
    """What :func:`run_migrations` sets and where it publishes; seconds, 0 meaning "not set"."""

    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    statement_timeout: float = 0.0
    textfile: str | None = None
    pushgateway: str | None = None
    pushgateway_job: str = "alembic"

    def __post_init__(self) -> None:
        for name, meaning in (
            ("lock_timeout", "how long a migration waits for a lock before it gives up"),
            ("statement_timeout", "how long one statement of a migration may run"),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigurationError(
                    f"{name} must be a number of seconds >= 0 (got {value!r}); it is {meaning}, "
                    "0 leaves the server's setting alone"
                )
        if self.pushgateway and not self.pushgateway.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"pushgateway must be an http(s) URL such as http://pushgateway:9091 "
                f"(got {self.pushgateway!r})"
            )

    @classmethod
    def resolve(
        cls,
        *,
        lock_timeout: float | None = None,
        statement_timeout: float | None = None,
        textfile: str | None = None,
        pushgateway: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> MigrationOptions:
        """Keyword arguments over ``OBSERVER_ALEMBIC_*`` environment variables over defaults."""
        env = os.environ if environ is None else environ
        if (
            problem := unknown_variable(env, ENV.values(), prefix=_PREFIX, owner=_OWNER)
        ) is not None:
            raise ConfigurationError(problem)
        return cls(
            lock_timeout=_seconds(lock_timeout, env, "lock_timeout", DEFAULT_LOCK_TIMEOUT),
            statement_timeout=_seconds(statement_timeout, env, "statement_timeout", 0.0),
            textfile=textfile or env.get(ENV["textfile"]) or None,
            pushgateway=pushgateway or env.get(ENV["pushgateway"]) or None,
        )


def _seconds(value: float | None, env: Mapping[str, str], name: str, default: float) -> float:
    if value is not None:
        return value
    raw = env.get(ENV[name], "").strip()
    if not raw:
        return default
    if raw.lower() in {"off", "none"}:
        return 0.0
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(
            f"{ENV[name]} must be a number of seconds (got {raw!r}); 0 or off leaves the "
            "server's setting alone"
        ) from None
