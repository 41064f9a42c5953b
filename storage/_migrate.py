"""Alembic plumbing: a Config built in code, the head revision, and the upgrade.

Import this module through :func:`storage._engine.migrate`, which silences the INFO messages
that importing Alembic logs.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine

from storage._errors import StorageError

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"


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


def upgrade_to_head(engine: Engine, url_display: str) -> None:
    """Upgrade the database to :func:`head_revision` in one transaction; no-op when there."""
    head = head_revision()
    with engine.begin() as connection:
        if current_revision(connection) == head:
            return
        try:
            command.upgrade(alembic_config(connection), "head")
        except CommandError as exc:
            raise StorageError(
                f"cannot migrate database {url_display} ({exc}); it was probably written by a "
                "newer version of sweep: upgrade sweep or use another database"
            ) from exc
