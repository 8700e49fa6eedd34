"""The Alembic revisions of the code and of the database, compared: current, behind, ahead."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from observer.server._findings import Finding
from observer.settings import ConfigurationError

DEFAULT_VERSION_TABLE = "alembic_version"
# current: the database is at the code's head(s); behind: it lacks revisions the code has;
# ahead: it has revisions the code does not know (a newer release migrated it);
# uninitialized: no alembic_version table, or an empty one.
STATES = ("current", "behind", "ahead", "uninitialized")
NONE = "none"


class CodeRevisions:
    """The revisions of an Alembic script directory: its heads and every revision it knows.

    Read once: the code of a running process does not change.
    """

    def __init__(
        self, *, script_location: str | None = None, alembic_config: str | None = None
    ) -> None:
        try:
            from alembic.config import Config
            from alembic.script import ScriptDirectory
        except ModuleNotFoundError:  # pragma: no cover - the alembic extra is missing
            raise ConfigurationError(
                "the schema drift check needs Alembic: pip install 'pool-observer[alembic]'"
            ) from None
        if bool(script_location) == bool(alembic_config):
            raise ConfigurationError(
                "give exactly one of script_location (the directory holding env.py and "
                "versions/) or alembic_config (the path of alembic.ini)"
            )
        try:
            if alembic_config:
                script = ScriptDirectory.from_config(Config(alembic_config))
            else:
                script = ScriptDirectory(str(script_location))
            self.heads = tuple(sorted(script.get_heads()))
            self.known = frozenset(rev.revision for rev in script.walk_revisions())
        except Exception as exc:
            where = alembic_config or script_location
            raise ConfigurationError(
                f"cannot read the Alembic revisions of {where!r}: {type(exc).__name__}: {exc}; "
                "point script_location at the directory with env.py and versions/ "
                "(or alembic_config at alembic.ini)"
            ) from None
        if not self.heads:
            raise ConfigurationError(
                f"no Alembic revision found under {alembic_config or script_location!r}: point "
                "script_location at the directory with env.py and versions/ (or alembic_config "
                "at alembic.ini)"
            )

    def compare(self, database: str, revisions: tuple[str, ...]) -> SchemaState:
        """The drift state of a database at ``revisions`` against this code."""
        unknown = tuple(rev for rev in revisions if rev not in self.known)
        if not revisions:
            state = "uninitialized"
        elif unknown:
            state = "ahead"
        elif set(revisions) != set(self.heads):
            state = "behind"
        else:
            state = "current"
        return SchemaState(database, tuple(sorted(revisions)), self.heads, state)


@dataclass(frozen=True)
class SchemaState:
    """Where a database's schema is, against the head(s) the code expects."""

    database: str
    database_revisions: tuple[str, ...]
    code_heads: tuple[str, ...]
    state: str

    @property
    def drift(self) -> bool:
        """Whether the database and the code disagree."""
        return self.state != "current"

    @property
    def database_revision(self) -> str:
        """The database's revision(s) as one label value (``none`` when never migrated)."""
        return ",".join(self.database_revisions) or NONE

    @property
    def code_head(self) -> str:
        """The code's head revision(s) as one label value."""
        return ",".join(self.code_heads) or NONE


def read_revisions_sync(
    connection: Connection,
    *,
    version_table: str = DEFAULT_VERSION_TABLE,
    version_table_schema: str | None = None,
) -> tuple[str, ...]:
    """The database's current revision(s), read the way Alembic reads them (empty: none)."""
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(
        connection,
        opts={"version_table": version_table, "version_table_schema": version_table_schema},
    )
    return tuple(sorted(context.get_current_heads()))


async def read_revisions(
    connection: AsyncConnection,
    *,
    version_table: str = DEFAULT_VERSION_TABLE,
    version_table_schema: str | None = None,
) -> tuple[str, ...]:
    """:func:`read_revisions_sync` over an async connection."""
    return await connection.run_sync(
        lambda conn: read_revisions_sync(
            conn, version_table=version_table, version_table_schema=version_table_schema
        )
    )


def check_schema(state: SchemaState) -> list[Finding]:
    """doctor's finding when the database and the code disagree (none when they agree)."""
    db, at, head = state.database, state.database_revision, state.code_head
    if state.state == "behind":
        return [
            Finding(
                "alembic_schema_drift",
                "error",
                f"database {db} is at Alembic revision {at} but the code's head is {head}: "
                "the code expects tables and columns the database does not have yet",
                "run `alembic upgrade head` before the new code takes traffic, or roll the "
                "deploy back to the release that matches the database",
            )
        ]
    if state.state == "ahead":
        return [
            Finding(
                "alembic_schema_drift",
                "warning",
                f"database {db} is at Alembic revision {at}, which this code does not know "
                f"(its head is {head}): a newer release migrated it (a rollback, or a deploy "
                "still rolling out)",
                "finish the deploy of the release that migrated the database, or, if this "
                f"code is meant to stay, run that release's `alembic downgrade {head}` "
                "(check first that the downgrade loses no data)",
            )
        ]
    if state.state == "uninitialized":
        return [
            Finding(
                "alembic_schema_drift",
                "error",
                f"database {db} has no Alembic revision (no {DEFAULT_VERSION_TABLE} row): it "
                f"was never migrated, or this is the wrong database; the code's head is {head}",
                "run `alembic upgrade head` (or `alembic stamp head` if the schema was created "
                "another way)",
            )
        ]
    return []
