"""Checkpoints load without unpickling code; user task code comes only from the path given;
every public name is documented."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch

import storage
import sweep
import trials
from trials import TaskError, resolve_task_factory, task_file
from trials._task import cached_state_dict

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    path
    for folder in ("trials", "storage", "sweep", "scripts", "examples", "tests")
    for path in sorted((ROOT / folder).rglob("*.py"))
    if path != Path(__file__).resolve()  # this file names the call in its checks
]


def test_every_torch_load_uses_weights_only() -> None:
    calls = 0
    for path in SOURCES:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            calls += 1
            call = text[match.end() : text.find(")", match.end()) + 1]
            assert "weights_only=True" in call, f"{path.relative_to(ROOT)}: torch.load({call}"
    assert calls >= 1  # the baseline cache loads one


class _Payload:
    """Unpickling this would run code; a weights-only load refuses it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_baseline_cache_refuses_a_checkpoint_with_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(tmp_path))
    key = {"task": "safety", "seed": 1}
    state = cached_state_dict(key, lambda: torch.nn.Linear(2, 2))  # trains (builds) and saves
    assert set(state) == {"weight", "bias"}
    again = cached_state_dict(key, lambda: pytest.fail("the cache is read, not rebuilt"))
    assert all(torch.equal(again[name], state[name]) for name in state)
    (cached,) = tmp_path.glob("safety-*.pt")
    torch.save({"weight": _Payload()}, cached)  # someone swaps the file
    with pytest.raises(Exception, match="Weights only load failed"):
        cached_state_dict(key, lambda: torch.nn.Linear(2, 2))


def _write(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"def make():\n    return {value!r}\n")


def test_a_task_file_is_that_file_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module of the same name earlier on sys.path must not be picked up instead.
    _write(tmp_path / "elsewhere" / "mytask.py", "shadow")
    _write(tmp_path / "project" / "tasks" / "mytask.py", "mine")
    monkeypatch.syspath_prepend(str(tmp_path / "elsewhere"))
    monkeypatch.chdir(tmp_path / "project")
    assert resolve_task_factory("tasks/mytask.py:make")() == "mine"
    assert task_file("tasks/mytask.py:make") == tmp_path / "project" / "tasks" / "mytask.py"
    assert task_file("digits") is None and task_file("pkg.mod:make") is None
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TaskError, match=r"'tasks/mytask.py' is not a file \(looked for"):
        resolve_task_factory("tasks/mytask.py:make")
    absolute = tmp_path / "project" / "tasks" / "mytask.py"
    assert resolve_task_factory(f"{absolute}:make")() == "mine"
    sys.modules.pop("mytask", None)


def test_a_dotted_task_is_imported_from_sys_path_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path / "dotted_task_here.py", "here")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TaskError, match="cannot import 'dotted_task_here'"):
        resolve_task_factory("dotted_task_here:make")  # the working directory is not searched
    monkeypatch.syspath_prepend(str(tmp_path))  # as `sweep` (main) and `python -m` do
    assert resolve_task_factory("dotted_task_here:make")() == "here"
    sys.modules.pop("dotted_task_here", None)


@pytest.mark.parametrize("package", [trials, storage, sweep])
def test_every_public_name_is_documented(package: object) -> None:
    module = importlib.import_module(package.__name__)  # type: ignore[attr-defined]
    assert module.__doc__
    undocumented = []
    for name in module.__all__:
        value = getattr(module, name)
        if isinstance(value, str | int | tuple | dict | frozenset):
            continue  # constants: documented where they are defined and in the README
        doc = (getattr(value, "__doc__", None) or "").strip()
        # A dataclass without a docstring gets its signature as __doc__, which explains nothing.
        if not doc or (isinstance(value, type) and doc.startswith(f"{value.__name__}(")):
            undocumented.append(name)
        if not isinstance(value, type):
            continue
        for attr, member in vars(value).items():  # only what the class itself defines
            if isinstance(member, classmethod | staticmethod):
                member = member.__func__
            elif isinstance(member, property):
                member = member.fget
            if attr.startswith("_") or not callable(member):
                continue
            if not (getattr(member, "__doc__", None) or "").strip():
                undocumented.append(f"{name}.{attr}")
    assert not undocumented, f"{module.__name__}: no docstring on {', '.join(undocumented)}"
