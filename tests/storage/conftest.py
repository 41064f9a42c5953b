"""Backends for the storage tests, in the spirit of ``optuna/testing/storages.py``.

``store_url`` / ``store`` are parametrized over SQLite (a file in ``tmp_path``) and PostgreSQL.
PostgreSQL defaults to ``postgresql+psycopg://postgres@127.0.0.1:5432/test`` (override with
``SWEEP_TEST_POSTGRES_URL``); each test session works in its own schema ``sweep_test_<random>``,
dropped at the end. Without a reachable server the PostgreSQL tests skip, unless ``CI=true``:
then they fail.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from storage import Store

BACKENDS = ("sqlite", "postgresql")
POSTGRES_URL = os.environ.get(
    "SWEEP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TABLES = (
    "trial_artifacts",
    "trial_values",
    "trial_layers",
    "trial_details",
    "trials",
    "sweeps",
)


def _create_schema(engine: Engine) -> str:
    schema = f"sweep_test_{secrets.token_hex(6)}"
    with engine.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    return schema


@dataclass(frozen=True)
class PostgresServer:
    """A reachable PostgreSQL server plus this session's schema on it."""

    engine: Engine  # connects to the server's default schema
    schema: str

    def url(self, schema: str | None = None) -> str:
        """The test URL with ``search_path`` pointing at ``schema`` (default: the session's)."""
        url = sa.make_url(POSTGRES_URL).update_query_dict(
            {"options": f"-csearch_path={schema or self.schema}"}
        )
        return url.render_as_string(hide_password=False)

    def create_schema(self) -> str:
        return _create_schema(self.engine)

    def drop_schema(self, schema: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))

    def wipe(self) -> None:
        """Empty the session schema's tables (they exist once a Store has opened it)."""
        with self.engine.begin() as connection:
            found = connection.execute(
                sa.text("SELECT to_regclass(:name)"), {"name": f'"{self.schema}".sweeps'}
            ).scalar()
            if found is not None:
                tables = ", ".join(f'"{self.schema}"."{table}"' for table in TABLES)
                connection.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    engine = sa.create_engine(POSTGRES_URL, poolclass=NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        where = sa.make_url(POSTGRES_URL).render_as_string(hide_password=True)
        message = f"PostgreSQL not reachable at {where}: {reason}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true, so the PostgreSQL tests must run)")
        pytest.skip(message)
    server = PostgresServer(engine=engine, schema=_create_schema(engine))
    try:
        yield server
    finally:
        server.drop_schema(server.schema)
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """URL of an empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'sweeps.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    server.wipe()
    yield server.url()
    server.wipe()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with Store(store_url) as opened:
        yield opened


@pytest.fixture(params=BACKENDS)
def fresh_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """URL of a database no Store has touched yet (a new schema on PostgreSQL)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('fresh') / 'fresh.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    schema = server.create_schema()
    try:
        yield server.url(schema)
    finally:
        server.drop_schema(schema)
