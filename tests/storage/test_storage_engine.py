"""URLs, error messages, SQLite pragmas and transient-error retries (no PostgreSQL needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from storage import StorageError, Store
from storage._engine import is_transient, mask_url, with_retry

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        (
            "mysql://user:s3cr3t-pw@host/db",
            ["unsupported", "mysql://user:***@host/db", "sqlite:///"],
        ),
        ("foo://bar", ["unsupported", "foo://bar"]),
        ("not a url", ["cannot parse", "sqlite:///"]),
        ("", ["empty database URL"]),
        (
            "postgresql+psycopg://user:s3cr3t-pw@127.0.0.1:1/db",
            ["cannot open database postgresql+psycopg://user:***@127.0.0.1:1/db", "reachable"],
        ),
        (
            "postgresql://user:s3cr3t-pw@127.0.0.1:1/db?connect_timeout=2",
            ["postgresql+psycopg://user:***@127.0.0.1:1/db", "running"],
        ),
        ("postgresql+pg8000://user:s3cr3t-pw@127.0.0.1/db", ["user:***@", "cannot use"]),
    ],
)
def test_bad_url(url: str, fragments: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("storage._engine.RETRY_BASE_DELAY_S", 0.0)
    with pytest.raises(StorageError) as excinfo:
        Store(url)
    message = str(excinfo.value)
    assert SECRET not in message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_unwritable_sqlite_path(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'sweeps.db'}"
    with pytest.raises(StorageError, match=r"cannot open database sqlite:///.*writable"):
        Store(url)
    not_a_db = tmp_path / "text.db"
    not_a_db.write_text("this is not a database " * 100)
    with pytest.raises(StorageError, match=r"text\.db is not a SQLite database"):
        Store(f"sqlite:///{not_a_db}")


def test_url_display_masks_password(tmp_path: Path) -> None:
    assert (
        mask_url("postgresql+psycopg://u:p%40ss@h:5432/db")
        == "postgresql+psycopg://u:***@h:5432/db"
    )
    assert mask_url("weird://u:pw@@h") == "weird://u:***@h" or "pw" not in mask_url(
        "weird://u:pw@@h"
    )
    with Store(f"sqlite:///{tmp_path / 'x.db'}") as store:
        assert store.url_display.startswith("sqlite:///")
        assert repr(store) == f"Store({store.url_display!r})"


def test_sqlite_pragmas(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path / 'x.db'}") as store:
        engine: sa.Engine = store._engine
        with engine.connect() as connection:
            pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") == 30_000
            assert pragma("synchronous") == 1  # NORMAL


def test_in_memory_sqlite() -> None:
    with Store("sqlite://") as store:
        store.create_sweep("s", {}, {"accuracy": "max"})
        assert store.get_sweep("s").name == "s"


def _locked() -> OperationalError:
    return OperationalError("INSERT ...", {}, Exception("database is locked"))


def test_retry_recovers_from_transient_errors() -> None:
    calls: list[int] = []
    delays: list[float] = []

    def work() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _locked()
        return "done"

    assert with_retry(work, attempts=4, base_delay=0.1, sleep=delays.append) == "done"
    assert len(calls) == 3
    assert delays == [0.1, 0.2]


def test_retry_gives_up_and_reraises() -> None:
    delays: list[float] = []

    def work() -> None:
        raise _locked()

    with pytest.raises(OperationalError, match="database is locked"):
        with_retry(work, attempts=3, base_delay=0.01, sleep=delays.append)
    assert delays == [0.01, 0.02]


def test_retry_does_not_repeat_permanent_errors() -> None:
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        raise OperationalError("SELECT", {}, Exception("no such table: trials"))

    with pytest.raises(OperationalError):
        with_retry(work, sleep=lambda _: None)
    assert len(calls) == 1
    assert not is_transient(ValueError("database is locked"))
    assert is_transient(_locked())


def test_locked_database_is_retried_then_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("storage._engine.RETRY_BASE_DELAY_S", 0.001)  # give up quickly
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with Store(url) as store:
        store.create_sweep("s", {}, {"accuracy": "max"})
        blocker = sa.create_engine(url, connect_args={"timeout": 0})
        with blocker.connect() as connection:
            connection.exec_driver_sql("BEGIN EXCLUSIVE")
            engine: sa.Engine = store._engine

            @sa.event.listens_for(engine, "connect")
            def short_timeout(dbapi_connection: object, _record: object) -> None:
                dbapi_connection.execute("PRAGMA busy_timeout = 10")  # type: ignore[attr-defined]

            engine.dispose()  # new connections pick up the short timeout
            with pytest.raises(StorageError, match="database is locked") as excinfo:
                store.set_sweep_status("s", "FINISHED")
            assert isinstance(excinfo.value.__cause__, OperationalError)
            connection.exec_driver_sql("ROLLBACK")
        blocker.dispose()
        store.set_sweep_status("s", "FINISHED")
        assert store.get_sweep("s").status == "FINISHED"
