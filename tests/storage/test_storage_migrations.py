"""Alembic migrations: a fresh database ends at head and matches the models exactly."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib import resources

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from storage_helpers import make_record

from storage import StorageError, Store
from storage._migrate import alembic_config, head_revision
from storage._models import METRIC_COLUMNS, BaseModel

TABLES = {"sweeps", "trials", "trial_details", "trial_layers", "trial_values", "trial_artifacts"}


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
        assert context.get_current_revision() == head_revision() == "0007"
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
    assert migrations.joinpath("versions", "0002_trial_details.py").is_file()


def _insert(connection: sa.Connection, table: str, rows: list[dict[str, object]]) -> None:
    reflected = sa.Table(table, sa.MetaData(), autoload_with=connection)
    connection.execute(reflected.insert(), rows)


def test_upgrade_from_a_0001_database_keeps_every_row(fresh_url: str, engine: sa.Engine) -> None:
    """A database written by the first release (revision 0001): recipes, metrics and timings
    move to trial_details; no layer or value row is lost in the rebuild of ``trials``."""
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
        _insert(
            connection,
            "sweeps",
            [
                {
                    "id": 1,
                    "name": "old",
                    "config": '{"search_space": {"amount": {"min": 0.0, "max": 0.9}}}',
                    "objectives": '{"accuracy": "max", "size_bytes": "min"}',
                    "status": "FINISHED",
                    "created_at": created,
                    "updated_at": created,
                }
            ],
        )
        recipe = '{"order": "prune_qat", "granularity": "per_tensor", "layers": %s}'
        layers = '{"conv": {"amount": %s, "method": "unstructured"}}'
        _insert(
            connection,
            "trials",
            [
                {
                    "id": 10 + number,
                    "sweep_id": 1,
                    "number": number,
                    "state": "COMPLETE",
                    "recipe": recipe % (layers % (0.25 * number)),
                    "order": "prune_qat",
                    "granularity": "per_tensor",
                    "accuracy": 0.9 - 0.1 * number,
                    "size_bytes": 1000 - 100 * number,
                    "metrics": '{"accuracy": %s, "extra": 1}' % (0.9 - 0.1 * number),
                    "timings": '{"prune_s": 1.5}',
                    "started_at": created,
                    "finished_at": created,
                    "attempt": 1,
                }
                for number in range(2)
            ],
        )
        _insert(
            connection,
            "trial_layers",
            [
                {"trial_id": 10 + number, "layer": "conv", "amount": 0.25 * number}
                | {"method": "unstructured", "granularity": "per_tensor"}
                for number in range(2)
            ],
        )
        _insert(connection, "trial_values", [{"trial_id": 11, "step": 0, "value": 0.5}])

    with Store(fresh_url) as store:
        frame = store.trials("old")
        assert frame["number"].tolist() == [0, 1]
        assert frame["recipe"][1]["layers"]["conv"]["amount"] == 0.25
        assert frame["metrics"][0] == {"accuracy": 0.9, "extra": 1}
        assert frame["timings"][1] == {"prune_s": 1.5}
        assert store.layers("old")["amount"].tolist() == [0.0, 0.25]
        assert store.intermediate_values("old")[["number", "step"]].values.tolist() == [[1, 0]]
        assert store.pareto_front("old")["number"].tolist() == [0, 1]
        store.record_trials("old", [make_record(2, metrics={"accuracy": 0.95})])
        assert len(store.trials("old")) == 3
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert context.get_current_revision() == head_revision()
        assert compare_metadata(context, BaseModel.metadata) == []
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        # The CHECK constraint on trial states survived the rebuild of ``trials``.
        connection.execute(sa.text("UPDATE trials SET state = 'DONE' WHERE number = 0"))


def test_upgrade_to_0004_gives_sparsity_its_new_meaning(fresh_url: str, engine: sa.Engine) -> None:
    """Sparsity counted zeros among the weights that remained: right for a trial that removed
    no channel (all zeros, nothing removed), unknowable for one that did (kept aside); the
    analytic task always counted removed weights."""
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0003")
        sweeps = [
            {"id": 1, "name": "real", "config": '{"task": "digits"}'},
            {"id": 2, "name": "analytic", "config": '{"task": "synthetic"}'},
        ]
        _insert(
            connection,
            "sweeps",
            [
                sweep
                | {"objectives": '{"accuracy": "max"}', "status": "FINISHED"}
                | {"created_at": created, "updated_at": created}
                for sweep in sweeps
            ],
        )
        trials = [
            (1, 0, 0.5, 0),
            (1, 1, 0.04, 112),
            (2, 0, 0.6, 30),
        ]  # sweep, number, old, channels
        _insert(
            connection,
            "trials",
            [
                {"id": 10 * s + n, "sweep_id": s, "number": n, "state": "COMPLETE", "sparsity": old}
                | {"attempt": 1}
                for s, n, old, _ in trials
            ],
        )
        _insert(
            connection,
            "trial_details",
            [
                {"trial_id": 10 * s + n, "recipe": "{}", "timings": "{}"}
                | {"metrics": json.dumps({"sparsity": old, "channels_removed": channels})}
                for s, n, old, channels in trials
            ],
        )
    with Store(fresh_url) as store:
        real = store.trials("real").set_index("number")
        assert real.loc[0, ["sparsity", "zero_fraction", "removed_fraction"]].tolist() == [
            0.5,
            0.5,
            0.0,
        ]
        assert real[["sparsity", "zero_fraction", "removed_fraction"]].loc[1].isna().all()
        assert real.loc[1, "metrics"]["zero_fraction_of_remaining"] == 0.04
        assert real.loc[1, "metrics"]["sparsity"] is None
        analytic = store.trials("analytic")
        assert analytic["sparsity"].tolist() == [0.6]
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0003")
        restored = connection.execute(sa.text("SELECT sparsity FROM trials ORDER BY id"))
        assert [row[0] for row in restored] == [0.5, 0.04, 0.6]


def test_upgrade_from_a_0005_database_keeps_rows_and_times_the_front_again(
    fresh_url: str, engine: sa.Engine
) -> None:
    """Revision 0006 adds the speedup's interval (NULL for trials timed once) and the table of
    model files; a store written before it reads as it did, and takes both."""
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0005")
    # Rows written through the tables as 0005 has them, not through today's models.
    with engine.begin() as connection:
        created = datetime(2026, 1, 2, tzinfo=timezone.utc)
        _insert(
            connection,
            "sweeps",
            [
                {
                    "id": 1,
                    "name": "old",
                    "config": "{}",
                    "objectives": '{"accuracy": "max", "latency_ms": "min"}',
                    "status": "FINISHED",
                    "created_at": created,
                    "updated_at": created,
                }
            ],
        )
        _insert(
            connection,
            "trials",
            [
                {
                    "id": 7,
                    "sweep_id": 1,
                    "number": 0,
                    "state": "COMPLETE",
                    "accuracy": 0.9,
                    "latency_ms": 2.0,
                    "speedup": 3.3,
                    "attempt": 1,
                    "run_s": 4.0,
                }
            ],
        )
        _insert(
            connection,
            "trial_details",
            [{"trial_id": 7, "recipe": "{}", "metrics": '{"speedup": 3.3}', "timings": "{}"}],
        )
    with Store(fresh_url) as store:
        row = store.trials("old").iloc[0]
        assert (row["speedup"], row["run_s"]) == (3.3, 4.0)
        assert row[["speedup_low", "speedup_high", "latency_rounds"]].isna().all()
        assert store.artifacts("old") == {}
        store.save_artifacts("old", "onnxruntime", {0: b"onnx bytes"})
        assert store.artifacts("old") == {0: ("onnxruntime", b"onnx bytes")}
        figures = {"speedup": 2.5, "speedup_low": 2.4, "speedup_high": 2.6, "latency_rounds": 7}
        store.record_remeasured("old", {0: figures}, measured_on="here")
        row = store.trials("old").iloc[0]
        assert (row["speedup"], row["speedup_low"], row["latency_rounds"]) == (2.5, 2.4, 7)
        assert row["measured_on"] == "here"
        assert row["metrics"]["speedup_high"] == 2.6
        with pytest.raises(StorageError, match="no COMPLETE trial"):
            store.save_artifacts("old", "onnxruntime", {5: b"x"})
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert context.get_current_revision() == head_revision()
        assert compare_metadata(context, BaseModel.metadata) == []
