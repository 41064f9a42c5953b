"""A password in a PostgreSQL store URL never shows: not in any command's output or error, not
in the stored config, from `sweep launch` through `sweep status`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from storage import Store

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
