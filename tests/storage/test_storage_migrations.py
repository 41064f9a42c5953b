"""Alembic migrations: a fresh database ends at head and matches the models exactly."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib import resources

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from storage import StorageError, Store
from storage._migrate import alembic_config, head_revision
from storage._models import METRIC_COLUMNS, BaseModel

TABLES = {"sweeps", "trials", "trial_layers", "trial_values"}


@pytest.fixture
def engine(fresh_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(fresh_url)
    yield engine
    engine.dispose()


def test_fresh_database_is_at_head_and_matches_models(
    fresh_url: str, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    Store(fresh_url).close()
    assert not [record for record in caplog.records if record.name.startswith("alembic")]
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert context.get_current_revision() == head_revision() == "0001"
        assert compare_metadata(context, BaseModel.metadata) == []
        inspector = sa.inspect(connection)
        assert set(inspector.get_table_names()) == TABLES | {"alembic_version"}
        trial_columns = [column["name"] for column in inspector.get_columns("trials")]
        assert set(METRIC_COLUMNS) <= set(trial_columns)
        assert [c.name for c in BaseModel.metadata.tables["trials"].columns] == trial_columns
        indexes = {index["name"] for index in inspector.get_indexes("trials")}
        assert "ix_trials_sweep_id_state" in indexes
        assert "ix_trial_layers_layer" in {i["name"] for i in inspector.get_indexes("trial_layers")}


def test_reopen_and_downgrade_upgrade(fresh_url: str, engine: sa.Engine) -> None:
    with Store(fresh_url) as store:
        store.create_sweep("kept", {}, {"accuracy": "max"})
    with Store(fresh_url) as store:  # already at head: nothing to do, data intact
        assert [sweep.name for sweep in store.list_sweeps()] == ["kept"]
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    with Store(fresh_url) as store:
        assert store.list_sweeps() == []


def test_database_from_a_newer_version(fresh_url: str, engine: sa.Engine) -> None:
    Store(fresh_url).close()
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StorageError, match="newer version of sweep") as excinfo:
        Store(fresh_url)
    assert "\n" not in str(excinfo.value)


def test_migrations_are_packaged() -> None:
    migrations = resources.files("storage.migrations")
    assert migrations.joinpath("env.py").is_file()
    assert migrations.joinpath("script.py.mako").is_file()
    assert migrations.joinpath("versions", "__init__.py").is_file()
    assert migrations.joinpath("versions", "0001_initial.py").is_file()
