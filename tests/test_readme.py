"""The README cannot go stale: its marked examples run against real sweeps, the commands it
names only in the text run too, its configuration reference lists exactly the fields of
``sweep.SweepConfig``, and its set-up block is the two commands CI runs.

A fenced block right after a ``<!-- readme-test -->`` line runs against a small sweep named like
the walk-through's (``digits-demo``, on ``synthetic``): bash lines as shell commands, Python as a
script. After ``<!-- readme-test: KIND -->``:

- ``tiny``: in order, against a small ``digits`` sweep named ``tiny``: each ``$ sweep ...`` line
  of a ``text`` block runs (``, exit N`` after the kind: with that exit code) and the messages it
  shows must appear in what it prints; Python blocks run;
- ``recipe``: Python that uses ``model``, ``example_input``, ``train``, ``calibration_batches``
  and a ``recipe.json``, given from the ``digits`` task and a trial of ``tiny``;
- ``config``: a YAML fragment, validated as part of a config with a name and a task.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import pytest
import torch
import yaml
from pydantic import BaseModel

import storage
import trials
from storage import Store
from sweep import SweepConfig, parse_config, run_sweep
from tests.sweep.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MARK = re.compile(
    r"<!-- readme-test(?:: (\w+)(?:, exit (\d+))?)? -->\n```(\w+)\n(.*?)\n```", re.DOTALL
)
# The digits sweep the `tiny` examples query: as the README's tiny.yaml, made fast (no
# fine-tuning, one calibration batch, few timing runs); two trials, one of them nearly unpruned.
TINY_YAML = (
    "name: tiny\ntask: digits\nbudget: {n_trials: 2}\n"
    "trial: {finetune_epochs: 0, calibration_batches: 1}\nlatency: {warmup: 1, repeats: 3}\n"
)


class Block(NamedTuple):
    kind: str  # "" (the digits-demo sweep), "tiny", "recipe" or "config"
    exit_code: int  # of each command of a `tiny` text block
    language: str
    code: str


def marked_blocks(kind: str = "") -> list[Block]:
    """The fenced blocks marked ``<!-- readme-test -->`` (``kind`` ""), or
    ``<!-- readme-test: KIND -->``, in README order."""
    blocks = [
        Block(match.group(1) or "", int(match.group(2) or 0), match.group(3), match.group(4))
        for match in MARK.finditer(README)
    ]
    return [block for block in blocks if block.kind == kind]


def commands(code: str) -> list[str]:
    """The command lines of a bash block: continuation lines joined, comments dropped."""
    joined = code.replace("\\\n", " ")
    lines = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [shlex.join(words) for words in lines if words]


def shown_commands(code: str) -> list[tuple[str, list[str]]]:
    """``(command, lines it printed)`` of each ``$ `` line of a ``text`` block."""
    shown: list[tuple[str, list[str]]] = []
    for line in code.splitlines():
        if line.startswith("$ "):
            shown.append((line[2:], []))
        elif shown:
            shown[-1][1].append(line)
    return shown


def messages(printed: list[str]) -> list[str]:
    """The fixed text of each message line shown (not table rows, not "..."): up to its first
    figure, whitespace collapsed."""
    rows = re.compile(r"[\u2500-\u257f]")  # rich's box drawing: a table row
    fixed = [re.split(r"\d", line)[0] for line in printed if not rows.match(line)]
    return [" ".join(text.split()) for text in fixed if len(text.strip(" .")) >= 4]


def test_the_examples_are_marked() -> None:
    blocks = marked_blocks()
    assert {block.language for block in blocks} == {"bash", "python"}
    assert sum(len(commands(b.code)) for b in blocks if b.language == "bash") >= 8
    tiny = marked_blocks("tiny")
    assert {block.language for block in tiny} == {"text", "python"}
    assert sum(len(shown_commands(b.code)) for b in tiny if b.language == "text") >= 4
    assert [block.language for block in marked_blocks("recipe")] == ["python"]
    assert [block.language for block in marked_blocks("config")] == ["yaml", "yaml", "yaml"]
    every = list(MARK.finditer(README))
    assert README.count("<!-- readme-test") == len(every)  # every mark is followed by a block
    # Every Python and YAML block is marked, and every text block that shows `$ sweep ...`.
    marked = {match.start(3) for match in every}
    for fence in re.finditer(r"^```(\w+)\n(.*?)\n```", README, re.DOTALL | re.MULTILINE):
        language, code = fence.group(1), fence.group(2)
        must = language in ("python", "yaml") or (
            language == "text" and re.search(r"^\$ sweep ", code, re.MULTILINE) is not None
        )
        assert not must or fence.start(1) in marked, f"unmarked {language} block:\n{code}"


def _within(part: object, whole: object) -> bool:
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            key in whole and _within(value, whole[key]) for key, value in part.items()
        )
    return part == whole


def test_the_config_examples_validate() -> None:
    for block in marked_blocks("config"):
        fragment = yaml.safe_load(block.code)
        assert isinstance(fragment, dict), block.code
        config = parse_config({"name": "readme", "task": "digits", **fragment}, "README")
        assert _within(fragment, config.model_dump(mode="json")), block.code


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SWEEP_STORAGE", None)
    # The `sweep` entry point installed beside this interpreter, as after the set-up command.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose ``sweeps.db`` holds a small sweep named like the walk-through's, made by
    the installed ``sweep`` command."""
    folder = tmp_path_factory.mktemp("demo")
    (folder / "demo.yaml").write_text(
        "name: digits-demo\ntask: synthetic\nbudget: {n_trials: 8}\n"
        "task_settings: {trial_seconds: 0.0, n_layers: 4}\n"
    )
    launched = _run(["sweep", "launch", "demo.yaml"], folder)
    assert launched.returncode == 0, launched.stderr[-3000:]
    return folder


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a launch and about ten fresh processes, on a shared machine
def test_the_examples_run(demo: Path) -> None:
    """Every block marked for the demo sweep, in order, each command in a fresh process."""
    ran = 0
    for block in marked_blocks():
        if block.language == "python":
            result = _run([sys.executable, "-c", block.code], demo)
            assert result.returncode == 0, (block.code, result.stderr[-3000:])
            ran += 1
            continue
        for line in commands(block.code):
            result = _run(["bash", "-c", line], demo)
            assert result.returncode == 0, (line, result.stderr[-3000:])
            assert "Traceback" not in result.stderr
            ran += 1
    assert ran >= 9


@pytest.mark.slow
def test_the_commands_named_in_the_text_run(
    demo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands and Python calls that the text names with ``digits-demo`` (``sweep layers``,
    ``sweep export``, ...), and ``sweep best`` and ``sweep plot``, which it shows only with
    ``NAME``: each once, on the demo sweep."""
    monkeypatch.chdir(demo)
    monkeypatch.delenv("SWEEP_STORAGE", raising=False)
    named = re.findall(r"(?<!`)`(sweep [a-z]+ digits-demo[^`]*)`", README)
    for command in ("layers", "export", "best", "plot"):
        if not any(line.split()[1] == command for line in named):
            named.append(f"sweep {command} digits-demo")
    for line in named:
        code, _, err = run_cli(monkeypatch, capsys, *shlex.split(line)[1:])
        assert code == 0, (line, err)
    assert (demo / "optuna.db").exists() and (demo / "digits-demo.png").exists()
    calls = re.findall(r"`((?:storage|store|optuna)\.[^`]*digits-demo[^`]*)`", README)
    assert len(calls) >= 3
    with Store("sqlite:///sweeps.db") as store:
        for call in calls:
            eval(call, {"storage": storage, "store": store, "optuna": optuna})


@pytest.fixture(scope="module")
def tiny(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``tiny.yaml`` and, in ``sweeps.db``, the sweep ``tiny`` of the
    sensitivity and recommendation examples (real ``digits`` trials on the test's Ray)."""
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "tiny.yaml").write_text(TINY_YAML)
    with Store(f"sqlite:///{folder / 'sweeps.db'}") as store:
        run_sweep(parse_config(yaml.safe_load(TINY_YAML)), store)
    return folder


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_tiny_sweep_examples_run(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sensitivity, recommend (a match, then none), apply and reloading its file, in order."""
    monkeypatch.chdir(tiny)
    monkeypatch.delenv("SWEEP_STORAGE", raising=False)
    ran = 0
    for block in marked_blocks("tiny"):
        if block.language == "python":
            exec(compile(block.code, "README.md", "exec"), {"__name__": "__readme__"})
            ran += 1
            continue
        for line, printed in shown_commands(block.code):
            recipe = tiny / "recipe.json"
            before = recipe.read_bytes() if recipe.exists() else None
            code, out, err = run_cli(monkeypatch, capsys, *shlex.split(line)[1:])
            assert code == block.exit_code, (line, err[-3000:])
            said = " ".join(f"{out}\n{err}".split())
            for message in messages(printed):
                assert message in said, (line, message, said[-3000:])
            if block.exit_code:  # a failed recommend writes nothing
                assert (recipe.read_bytes() if recipe.exists() else None) == before
            ran += 1
    assert ran >= 5
    assert (tiny / "tiny-sensitivity.png").exists() and (tiny / "model.onnx").exists()


def _train(task: trials.Task) -> Any:
    """A plain training loop, one epoch: the README's ``train(model)``."""

    def train(model: torch.nn.Module) -> None:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for inputs, targets in task.train_batches():
            optimizer.zero_grad(set_to_none=True)
            task.loss(model(inputs), targets).backward()
            optimizer.step()

    return train


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_recipe_goes_back_into_training(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two-call block, with the digits task standing in for the user's model and data and
    the recipe of the sweep's most accurate trial."""
    with Store(f"sqlite:///{tiny / 'sweeps.db'}") as store:
        done = store.trials("tiny", states=["COMPLETE"])
    recipe = done.sort_values("accuracy", ascending=False)["recipe"].iloc[0]
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    monkeypatch.chdir(tmp_path)
    task = trials.load_task("digits")
    (block,) = marked_blocks("recipe")
    names: dict[str, Any] = {
        "model": task.build_model(),
        "example_input": task.example_input(),
        "train": _train(task),
        "calibration_batches": list(task.calibration_batches()),
    }
    exec(compile(block.code, "README.md", "exec"), names)
    accuracy = task.evaluate(names["int8_model"], torch.device("cpu"))["accuracy"]
    assert accuracy > 0.9


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
