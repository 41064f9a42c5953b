"""Alembic plumbing: a Config built in code, the head revision, and the upgrade.

Import this module through :func:`storage._engine.migrate`, which silences the INFO messages
that importing Alembic logs.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, text

from storage._engine import scrub
from storage._errors import StorageError

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK: Final = 0x5357_4545_5001  # PostgreSQL advisory lock key of schema migrations
_ALEMBIC_LOCK: Final = threading.Lock()


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic Config for the packaged migrations (no alembic.ini involved).

    With ``connection``, env.py runs the migrations on it instead of opening its own.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def head_revision() -> str | None:
    """The newest revision among the packaged migrations."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (None for an empty database)."""
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection, head: str | None, url_display: str) -> None:
    """Upgrade inside the caller's transaction, which holds the migration lock."""
    if current_revision(connection) == head:
        return  # another process migrated while this one waited for the lock
    try:
        command.upgrade(alembic_config(connection), "head")
    except CommandError as exc:
        raise StorageError(
            f"cannot migrate database {url_display} ({scrub(str(exc))}); it was probably "
            "written by a newer version of sweep: upgrade sweep or use another database"
        ) from exc


def _upgrade_sqlite(engine: Engine, head: str | None, url_display: str) -> None:
    """``BEGIN IMMEDIATE`` serialises concurrent migrations. Foreign keys are off meanwhile:
    Alembic's batch mode rebuilds a table by dropping it, and with foreign keys on, SQLite
    would delete every row that references it (ON DELETE CASCADE). They are checked after."""
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        assert raw is not None
        raw.execute("PRAGMA foreign_keys = OFF")  # only takes effect outside a transaction
        try:
            with connection.execution_options(sqlite_begin="IMMEDIATE").begin():
                _upgrade(connection, head, url_display)
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").first()
                if broken is not None:
                    raise StorageError(
                        f"cannot migrate database {url_display}: table {broken[0]} holds rows "
                        f"whose {broken[2]} row is missing; repair or recreate the database"
                    )
        finally:
            raw.execute("PRAGMA foreign_keys = ON")


def upgrade_to_head(engine: Engine, url_display: str) -> None:
    """Upgrade the database to :func:`head_revision` in one transaction; no-op when there.

    Concurrent openers of a database that needs migrating (several drivers starting at once)
    are serialised: a write lock on SQLite, an advisory lock on PostgreSQL; the ones that
    waited find the database at head.
    """
    head = head_revision()
    with engine.connect() as connection:
        if current_revision(connection) == head:
            return
    # Alembic keeps the running migration in module globals (alembic.op, alembic.context):
    # threads of one process must not run migrations at the same time, even on two databases.
    with _ALEMBIC_LOCK:
        if engine.dialect.name == "sqlite":
            _upgrade_sqlite(engine, head, url_display)
            return
        with engine.begin() as connection:
            lock = text("SELECT pg_advisory_xact_lock(:key)")
            connection.execute(lock, {"key": MIGRATION_LOCK})
            _upgrade(connection, head, url_display)
