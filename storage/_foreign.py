"""Is this database a sweep store? Asked before the store touches it.

Opening a store switches a SQLite file to WAL and migrates the schema: right for a sweep store,
wrong for anything else a user might point ``--storage`` at (the Optuna database ``sweep export``
writes, another program's SQLite file, a text file). So the database is inspected first, on
SQLite through a read-only connection that changes no byte of the file, and refused with one line
that says what it is, when it holds tables but not ours. An empty database, or a path with no
file yet, becomes a store only when the caller creates one (``sweep launch``); read-only commands
are told that nothing is stored there.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, inspect

from storage._errors import StorageError

# Tables every revision of our schema has (0001_initial onwards).
OUR_TABLES = frozenset({"sweeps", "trials", "alembic_version"})
OPTUNA_TABLES = frozenset({"studies", "version_info"})
_CREATE_HINT = "`sweep launch` creates a store; check --storage (or SWEEP_STORAGE)"


def _what_it_is(tables: Collection[str], where: str) -> str | None:
    """Why a database holding ``tables`` is not a sweep store, or None when it is one."""
    if set(tables) >= OUR_TABLES:
        return None
    if set(tables) >= OPTUNA_TABLES:
        return (
            f"{where} is an Optuna storage, not a sweep store; open it with optuna (or "
            "optuna-dashboard), and give sweep the store its sweeps are in"
        )
    listed = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    return f"{where} is a database of something else (tables {listed}), not a sweep store"


def check_sqlite(database: str | None, *, create: bool) -> None:
    """Refuse a SQLite path that is not a sweep store (see the module docstring)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.exists():
        if create:
            return
        raise StorageError(f"no sweep store at {path}: the file does not exist; {_CREATE_HINT}")
    if path.is_dir():
        raise StorageError(f"{path} is a folder, not a sweep store; give a file path")
    # The file is read through SQLite only, never opened by Python: closing any descriptor of a
    # file drops every POSIX lock this process holds on it, those of a Store's open connections
    # included, and another process could then checkpoint the database under them (SQLite's
    # "how to corrupt your database", 2.2). SQLite itself shares its descriptors between
    # connections of one process and so keeps their locks.
    if path.stat().st_size == 0:
        if create:
            return
        raise StorageError(f"{path} is an empty file, not a sweep store yet; {_CREATE_HINT}")
    try:
        connection = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
        try:
            rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = [str(row[0]) for row in rows]
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise StorageError(
                f"{path} is not a SQLite database (not a sweep store); give the path of the store"
            ) from None
        raise StorageError(f"{path} cannot be read as a SQLite database ({exc})") from None
    _refuse(tables, str(path), create=create)


def check_server(engine: Engine, where: str, *, create: bool) -> None:
    """The same for a server database (PostgreSQL): its tables in the connection's schema."""
    _refuse(inspect(engine).get_table_names(), where, create=create)


def _refuse(tables: Collection[str], where: str, *, create: bool) -> None:
    # A store downgraded to the base revision keeps only Alembic's (empty) version table.
    if not set(tables) - {"alembic_version"}:
        if create:
            return
        raise StorageError(f"{where} holds no sweep store yet (no tables); {_CREATE_HINT}")
    reason = _what_it_is(tables, where)
    if reason is not None:
        raise StorageError(reason)
