"""The README cannot go stale: its marked examples run against a real sweep, its configuration
reference lists exactly the fields of ``sweep.SweepConfig``, and its set-up block is the two
commands CI runs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from sweep import SweepConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MARK = "<!-- readme-test -->"


def marked_blocks() -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block right after a ``<!-- readme-test -->`` line."""
    pattern = re.compile(re.escape(MARK) + r"\n```(\w+)\n(.*?)\n```", re.DOTALL)
    return [(match.group(1), match.group(2)) for match in pattern.finditer(README)]


def commands(code: str) -> list[str]:
    """The command lines of a bash block: continuation lines joined, comments dropped."""
    joined = code.replace("\\\n", " ")
    lines = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [shlex.join(words) for words in lines if words]


def test_the_examples_are_marked() -> None:
    blocks = marked_blocks()
    assert {language for language, _ in blocks} == {"bash", "python"}
    assert sum(len(commands(code)) for language, code in blocks if language == "bash") >= 8
    assert README.count(MARK) == len(blocks)  # every mark is followed by a block


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a launch and about ten fresh processes, on a shared machine
def test_the_examples_run(tmp_path: Path) -> None:
    """A small sweep named like the walk-through's, then every marked block, in order."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SWEEP_STORAGE", None)
    # The `sweep` entry point installed beside this interpreter, as after the set-up command.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    (tmp_path / "demo.yaml").write_text(
        "name: digits-demo\ntask: synthetic\nbudget: {n_trials: 8}\n"
        "task_settings: {trial_seconds: 0.0, n_layers: 4}\n"
    )

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )

    launched = run(["sweep", "launch", "demo.yaml"])
    assert launched.returncode == 0, launched.stderr[-3000:]
    ran = 0
    for language, code in marked_blocks():
        if language == "python":
            result = run([sys.executable, "-c", code])
            assert result.returncode == 0, (code, result.stderr[-3000:])
            ran += 1
            continue
        for line in commands(code):
            result = run(["bash", "-c", line])
            assert result.returncode == 0, (line, result.stderr[-3000:])
            assert "Traceback" not in result.stderr
            ran += 1
    assert ran >= 9


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def _documented_fields() -> dict[str, str]:
    """Field path -> its default cell, from the configuration table. A cell such as
    ``budget.n_trials`` / ``timeout_s`` names ``budget.n_trials`` and ``budget.timeout_s``."""
    fields: dict[str, str] = {}
    for row in _section("Configuration").splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        defaults = [part.strip() for part in cells[1].split(" / ")]
        prefix = names[0].rpartition(".")[0]
        for index, name in enumerate(names):
            full = name if "." in name or not prefix else f"{prefix}.{name}"
            fields[full] = defaults[index] if len(defaults) == len(names) else cells[1]
    return fields


def _model_fields(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
    """Field path -> default of every SweepConfig field, one level of sections deep
    (``budget.n_trials``; ``search_space.amount`` is one field with a mapping default)."""
    fields: dict[str, object] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if nested and not prefix:
            fields.update(_model_fields(annotation, f"{name}."))  # type: ignore[arg-type]
        else:
            default = info.get_default(call_default_factory=True)
            fields[f"{prefix}{name}"] = default
    return fields


def test_the_configuration_reference_lists_every_field() -> None:
    documented = _documented_fields()
    actual = _model_fields(SweepConfig)
    assert sorted(documented) == sorted(actual)
    for name, default in actual.items():
        cell = documented[name]
        shown = re.findall(r"`([^`]+)`", cell)
        if isinstance(default, int | float) and not isinstance(default, bool):
            assert [float(v) for v in shown[:1]] == [default], (
                f"{name}: README {cell}, code {default}"
            )
        elif isinstance(default, str):
            assert shown[:1] == [default], f"{name}: README default {cell}, code {default!r}"
        elif default is None:
            assert cell.startswith("none") or cell == "—", f"{name}: README default {cell}"


def test_the_setup_block_is_the_two_commands() -> None:
    first = re.search(r"```bash\n(.*?)\n```", README, re.DOTALL)
    assert first is not None
    lines = first.group(1).splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(".venv/bin/sweep launch examples/digits.yaml --replace")
    assert lines[1].endswith(".venv/bin/python -m pytest -q")
