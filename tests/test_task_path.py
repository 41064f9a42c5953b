"""The working directory is importable for a ``package.module:factory`` task only: a stray file
there named like a library (``matplotlib.py``, ``yaml.py``) never runs in its place."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.sweep.test_errors import TINY_RECIPE, TINY_TASK, _keep, run_sweep_cli

# As the installed `sweep` script starts: its own folder first on sys.path, not the working
# directory (`python -c` puts the working directory first: drop it).
DROP_WORKING_DIRECTORY = """
import os, sys
if sys.path and sys.path[0] in ("", os.getcwd()):
    sys.path.pop(0)
"""
STRAY = "open({marker!r}, 'w').write('imported')\n"


def _sweep(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_sweep_cli(argv, cwd, code=DROP_WORKING_DIRECTORY)


def test_a_stray_module_in_the_working_directory_is_not_imported(tmp_path: Path) -> None:
    marker = tmp_path / "imported.txt"
    for name in ("matplotlib.py", "plotly.py", "yaml.py"):  # what `sweep plot` imports
        (tmp_path / name).write_text(STRAY.format(marker=str(marker)))
    db = f"sqlite:///{tmp_path / 'store.db'}"
    _keep(db)
    result = _sweep(["plot", "keep", "-o", str(tmp_path / "plots"), "--storage", db], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "plots" / "keep.png").read_bytes().startswith(b"\x89PNG")
    assert not marker.exists(), "a stray module of the working directory was imported"


def test_a_task_module_in_the_working_directory_still_loads(tmp_path: Path) -> None:
    (tmp_path / "mytask.py").write_text(TINY_TASK)
    (tmp_path / "recipe.json").write_text(TINY_RECIPE)
    argv = ["apply", "recipe.json", "--task", "mytask:make", "-o", "model.onnx"]
    result = _sweep(argv, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on task 'mytask:make'" in result.stdout
    assert (tmp_path / "model.onnx").stat().st_size > 0
