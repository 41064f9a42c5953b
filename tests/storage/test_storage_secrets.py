"""A password in a PostgreSQL store URL never shows: not in any command's output or error, not
in the stored config, from `sweep launch` through `sweep status`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from storage import Store
from storage._engine import mask_url, scrub, with_retry
from tests.sweep.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-Secret-42"


@pytest.fixture
def url_with_password(postgres: Any) -> Iterator[str]:
    schema = postgres.create_schema()
    try:
        url = sa.make_url(postgres.url(schema)).set(password=PASSWORD)
        yield url.render_as_string(hide_password=False)
    finally:
        postgres.drop_schema(schema)


def _sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SWEEP_STORAGE", None)
    return subprocess.run(
        [sys.executable, "-m", "sweep", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_password_never_in_output_or_store(url_with_password: str, tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(
        f"name: secret\ntask: synthetic\nstorage: '{url_with_password}'\n"
        "task_settings: {trial_seconds: 0.0, n_layers: 4}\nbudget: {n_trials: 4}\n"
    )
    store = ("--storage", url_with_password)
    runs = [
        (0, ("launch", "sweep.yaml")),
        (0, ("status", *store)),
        (0, ("status", "secret", "--format", "json", *store)),
        (0, ("trials", "secret", "--format", "json", *store)),
        (0, ("pareto", "secret", "--format", "csv", *store)),
        (0, ("layers", "secret", *store)),
        (0, ("export", "secret", "--optuna-storage", "sqlite:///optuna.db", *store)),
        (2, ("pareto", "ghost", *store)),
        (2, ("launch", "sweep.yaml")),  # already exists: the error names the store
    ]
    for code, argv in runs:
        result = _sweep(*argv, cwd=tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode == code, (argv, output[-3000:])
        assert PASSWORD not in output, argv
    assert "***" in output  # the error shows the URL, masked
    with Store(url_with_password) as opened:
        stored = opened.get_sweep("secret").config
    assert stored["storage"] is not None and PASSWORD not in str(stored)
    assert PASSWORD not in (tmp_path / "optuna.db").read_bytes().decode("latin-1")


QUERY_SECRET = "QSECRET"

# libpq also takes the password, and the client key's passphrase, as URL query parameters.
QUERY_URLS = [
    f"postgresql+psycopg://u@host/db?password={QUERY_SECRET}",
    f"postgresql+psycopg:///db?host=h&password={QUERY_SECRET}",
    f"postgresql+psycopg://u@host/db?sslpassword={QUERY_SECRET}&sslmode=require",
    f"postgresql+psycopg://u@host/db?connect_timeout=3&SslPassWord={QUERY_SECRET}",
    f"postgresql+psycopg://u:{QUERY_SECRET}@host/db?PASSWORD={QUERY_SECRET}",
]


@pytest.mark.parametrize("url", QUERY_URLS)
def test_mask_url_hides_query_passwords(url: str) -> None:
    for given in (url, sa.make_url(url)):
        masked = mask_url(given)
        assert QUERY_SECRET not in masked
        assert "password=***" in masked.lower()
        assert masked.startswith("postgresql+psycopg://")
    assert "connect_timeout=3" in mask_url(QUERY_URLS[3])  # other parameters stay readable


def test_mask_url_hides_encoded_and_repeated_query_passwords() -> None:
    url = "postgresql+psycopg://u@h/db?password=p%40ss%26word&password=two&sslpassword=k%23y"
    masked = mask_url(url)
    for fragment in ("p%40ss", "p@ss", "%26w", "&w", "two", "k%23y", "k#y"):
        assert fragment not in masked
    assert masked.count("***") == 3


def test_mask_url_hides_query_password_of_unparsable_url() -> None:
    masked = mask_url(f"not a url://u:pw@h/db?password={QUERY_SECRET}")
    assert QUERY_SECRET not in masked and ":pw@" not in masked


@pytest.mark.parametrize("url", QUERY_URLS)
def test_scrub_hides_query_passwords(url: str) -> None:
    parsed = sa.make_url(url)
    messages = [
        f"cannot connect with {url}",  # the URL echoed as given
        f"invalid connection option: host=h user=u password={QUERY_SECRET} dbname=db",
        f"bad value: sslpassword='{QUERY_SECRET}' sslmode=require",
        f"secret {QUERY_SECRET} echoed bare\nsecond line",
    ]
    for message in messages:
        line = scrub(message, parsed)
        assert QUERY_SECRET not in line, message
        assert "\n" not in line


def test_scrub_hides_encoded_query_password() -> None:
    url = sa.make_url("postgresql+psycopg://u@h/db?password=p%40ss+w%26rd")
    assert url.query["password"] == "p@ss w&rd"
    for echoed in ("p@ss w&rd", "p%40ss+w%26rd", "p%40ss%20w%26rd"):
        assert scrub(f"failed for {echoed}: refused", url) == "failed for ***: refused"


def test_scrub_hides_conninfo_passwords_it_was_not_told_about() -> None:
    # A message may name a password other than the URL's (one from a service file, say).
    url = sa.make_url("postgresql+psycopg://u@h/db")
    line = scrub(r"conninfo: host=h password='s3\'cr et' PGPASSWORD=other port=1", url)
    assert line == "conninfo: host=h password=*** PGPASSWORD=*** port=1"
    assert scrub("see postgresql://u:hidden@h/db", url) == "see postgresql://u:***@h/db"
    # Words around "password" that are no assignment stay as they are.
    text = 'FATAL: password authentication failed for user "u"'
    assert scrub(text, url) == text


def test_retry_log_hides_passwords(caplog: pytest.LogCaptureFixture) -> None:
    refused = OperationalError(
        "SELECT 1", {}, Exception(f"could not connect: host=h password={QUERY_SECRET}")
    )

    def fail() -> None:
        raise refused

    with (
        caplog.at_level(logging.DEBUG, logger="storage._engine"),
        pytest.raises(OperationalError),
    ):
        with_retry(fail, attempts=2, sleep=lambda _: None)
    assert "transient database error" in caplog.text
    assert QUERY_SECRET not in caplog.text


def test_cli_error_hides_query_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SWEEP_STORAGE", raising=False)
    url = f"postgresql+psycopg://nobody@127.0.0.1:1/x?password={QUERY_SECRET}"  # nothing listens
    code, out, err = run_cli(monkeypatch, capsys, "status", "--storage", url)
    assert code == 2, out + err
    assert QUERY_SECRET not in out + err
    errors = [line for line in (out + err).splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out + err
    assert "password=***" in errors[0] and "Traceback" not in err


def test_query_password_never_in_store_display(postgres: Any) -> None:
    # The test server trusts its clients, so the password is accepted and ignored.
    url = sa.make_url(postgres.url()).update_query_dict(
        {"password": QUERY_SECRET, "sslpassword": QUERY_SECRET}
    )
    with Store(url.render_as_string(hide_password=False)) as opened:
        assert QUERY_SECRET not in opened.url_display
        assert QUERY_SECRET not in repr(opened)
