"""The options of run_migrations(): OBSERVER_ALEMBIC_* variables over env.py's keywords."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from observer._environment import unknown_variable
from observer.settings import ENV_PREFIX, ConfigurationError

# One lock wait stalls the table's queries (and, through the pool, the app) at most this long.
DEFAULT_LOCK_TIMEOUT = 1.0
DEFAULT_MAX_ATTEMPTS = 10
# Longer than the usual blocker (a report, a batch job's transaction) but bounded: a deploy job
# that waits on a session left idle in transaction gives up within about a minute.
DEFAULT_RETRY_FOR = 60.0
_PREFIX, _OWNER = ENV_PREFIX + "ALEMBIC_", "run_migrations()"
ENV = {
    "lock_timeout": ENV_PREFIX + "ALEMBIC_LOCK_TIMEOUT",
    "statement_timeout": ENV_PREFIX + "ALEMBIC_STATEMENT_TIMEOUT",
    "max_attempts": ENV_PREFIX + "ALEMBIC_MAX_ATTEMPTS",
    "retry_for": ENV_PREFIX + "ALEMBIC_RETRY_FOR",
    "textfile": ENV_PREFIX + "ALEMBIC_TEXTFILE",
    "pushgateway": ENV_PREFIX + "ALEMBIC_PUSHGATEWAY",
}
_SECONDS = {
    "lock_timeout": "how long a migration statement waits for a lock before the attempt gives up",
    "statement_timeout": "how long one statement of a migration may run",
    "retry_for": "how long lock timeouts are retried before the migration fails",
}


@dataclass(frozen=True, kw_only=True)
class MigrationOptions:
    """What :func:`run_migrations` sets and where it publishes; seconds, 0 meaning "not set".

    ``overridden`` lists the options whose ``OBSERVER_ALEMBIC_*`` variable replaced a
    different keyword of ``env.py``: (name, keyword value, environment value).
    """

    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    statement_timeout: float = 0.0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_for: float = DEFAULT_RETRY_FOR
    textfile: str | None = None
    pushgateway: str | None = None
    pushgateway_job: str = "alembic"
    overridden: tuple[tuple[str, str, str], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        for name, meaning in _SECONDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigurationError(
                    f"{name} must be a number of seconds >= 0 (got {value!r}); it is {meaning}"
                    + (", 0 leaves the server's setting alone" if "timeout" in name else "")
                )
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(
                f"max_attempts must be a whole number >= 1 (got {attempts!r}); it is how many "
                "times a revision is tried when it gives up on a lock (1: never retried)"
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
        max_attempts: int | None = None,
        retry_for: float | None = None,
        textfile: str | None = None,
        pushgateway: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> MigrationOptions:
        """``OBSERVER_ALEMBIC_*`` environment variables over keywords over defaults.

        The environment wins so that an operator tunes a deploy (a longer ``lock_timeout`` for
        one run, no retries) without a code change; a keyword it replaces is reported in
        ``overridden`` (run_migrations logs it).
        """
        env = os.environ if environ is None else environ
        if (
            problem := unknown_variable(env, ENV.values(), prefix=_PREFIX, owner=_OWNER)
        ) is not None:
            raise ConfigurationError(problem)
        keywords: dict[str, object] = {
            "lock_timeout": lock_timeout,
            "statement_timeout": statement_timeout,
            "max_attempts": max_attempts,
            "retry_for": retry_for,
            "textfile": textfile,
            "pushgateway": pushgateway,
        }
        values: dict[str, object] = {}
        overridden: list[tuple[str, str, str]] = []
        for name, keyword in keywords.items():
            raw = env.get(ENV[name], "").strip()
            if not raw:
                if keyword is not None and keyword != "":
                    values[name] = keyword
                continue
            value = _parse(name, raw)
            values[name] = value
            if keyword is not None and keyword != "" and keyword != value:
                overridden.append((name, f"{keyword!r}", raw))
        return cls(**values, overridden=tuple(overridden))  # type: ignore[arg-type]


def _parse(name: str, raw: str) -> float | int | str | None:
    """The value of ``OBSERVER_ALEMBIC_<NAME>=raw``."""
    if name in {"textfile", "pushgateway"}:
        return raw
    if name == "max_attempts":
        try:
            return int(raw)
        except ValueError:
            raise ConfigurationError(
                f"{ENV[name]} must be a whole number >= 1 (got {raw!r}); 1 never retries"
            ) from None
    if raw.lower() in {"off", "none"}:
        return 0.0
    try:
        return float(raw)
    except ValueError:
        raise ConfigurationError(
            f"{ENV[name]} must be a number of seconds (got {raw!r}); 0 or off "
            + ("leaves the server's setting alone" if "timeout" in name else "never retries")
        ) from None
