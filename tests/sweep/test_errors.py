"""Bad input as a new user gives it, through the real command line (a subprocess of
``python -m sweep``): each case exits with its code, prints one ``error:`` line that names what
is wrong and how to fix it, no traceback, and leaves the sweep stored before it intact."""

from __future__ import annotations

import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch

from storage import Store, TrialRecord
from tests.sweep.cli_runner import run_cli
from trials import Recipe, RecipeError, apply_recipe

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-pw"
LAYERS = [f"block{i}.conv" for i in range(20)]


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Case:
    """``argv`` after ``sweep``; ``{db}``, ``{dir}`` and ``{port}`` are filled in. ``config``:
    the text of ``{dir}/sweep.yaml``; ``files``: more files in ``{dir}`` (a user's task)."""

    argv: tuple[str, ...]
    code: int
    expected: str
    config: str = ""
    files: tuple[tuple[str, str], ...] = ()
    file_size_limit: int | None = None  # RLIMIT_FSIZE: writes past it fail as on a full disk
    # A fresh process: for Ray start-up and file size limits. Others run in this process
    # through ``cli.main()`` (same code path, without seconds of imports per case).
    subprocess: bool = False
    # Environment variables of that process (``{port}`` filled in), e.g. RAY_ADDRESS.
    env: tuple[tuple[str, str], ...] = ()
    foreign: str = ""  # a kind of FOREIGN written to {dir}/other.db first


LAUNCH = ("launch", "{dir}/sweep.yaml", "--storage", "{db}")
TINY = "trial: {finetune_epochs: 0, calibration_batches: 1, latency_repeats: 3}\n"
NO_LAYERS_TASK = """
from torch import nn
from trials import Recipe


class Flat:
    name = "flat"
    trial_seconds = 0.0

    def build_model(self):
        return nn.Sequential(nn.Flatten(), nn.ReLU())

    def analytic_metrics(self, recipe: Recipe):
        return {"accuracy": 0.5, "compressed_bytes": 1.0, "latency_ms": 1.0}


def make():
    return Flat()
"""
CONV_TASK = NO_LAYERS_TASK.replace(
    "nn.Sequential(nn.Flatten(), nn.ReLU())", "nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())"
)
# A model small enough to compress in a second, large enough (about 24 KB saved) to outgrow a
# file size limit.
TINY_TASK = """
import torch
from torch import nn


class Tiny:
    name = "tiny"

    def build_model(self):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 4))

    def train_batches(self):
        g = torch.Generator().manual_seed(0)
        return [(torch.randn(8, 64, generator=g), torch.randint(0, 4, (8,), generator=g))]

    calibration_batches = validation_batches = train_batches

    def loss(self, output, target):
        return nn.functional.cross_entropy(output, target)

    def evaluate(self, model, device):
        inputs, targets = self.train_batches()[0]
        return {"accuracy": float((model(inputs).argmax(1) == targets).float().mean())}

    def example_input(self):
        return torch.zeros(1, 64)


def make():
    return Tiny()
"""
# The tiny task with a forward that branches on tensor values: it cannot be exported.
BRANCHY_TASK = TINY_TASK.replace(
    "        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 4))",
    "        return Branchy()",
).replace(
    "class Tiny:",
    "class Branchy(nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.fc = nn.Linear(64, 4)\n\n"
    "    def forward(self, x):\n"
    "        return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)\n\n\n"
    "class Tiny:",
)
TINY_RECIPE = (
    '{"schema_version": 1, "order": "prune_ptq", "finetune_epochs": 0, "calibration_batches": 1, '
    '"layers": {"0": {"amount": 0.5}, "2": {"amount": 0.5}}}'
)
OTHER_MODEL_RECIPE = (
    '{"schema_version": 1, "order": "prune_ptq", "layers": {"features.0": {"amount": 0.5}}}'
)
RECOMMEND = ("recommend", "keep", "--max-drop", "0.01", "--minimize", "latency_ms")

# The table of bad input: id -> case. Cases that start Ray are marked slow below.
CASES: dict[str, Case] = {
    "malformed_yaml": Case(
        LAUNCH, 2, "sweep.yaml: not valid YAML at line 2 (expected ',' or ']'", "name: [new\n"
    ),
    "unknown_config_field": Case(
        LAUNCH,
        2,
        "budgt: unknown field; did you mean 'budget'?",
        "name: new\ntask: digits\nbudgt: {n_trials: 3}\n",
    ),
    "unknown_config_field_unlike_any": Case(
        LAUNCH,
        2,
        "colour: unknown field; check its spelling against the configuration reference",
        "name: new\ntask: digits\ncolour: red\n",
    ),
    "section_given_a_scalar": Case(
        LAUNCH,
        2,
        "budget: expected a mapping (e.g. budget: {n_trials: 40})",
        "name: new\ntask: digits\nbudget: 5\n",
    ),
    "launch_name_with_a_space": Case(
        (*LAUNCH, "--name", "bad name"),
        2,
        "--name: 'bad name' is not a valid sweep name; use 1 to 200 letters, digits",
        "name: new\ntask: digits\n",
    ),
    "launch_empty_name": Case(
        (*LAUNCH, "--name", ""),
        2,
        "--name: '' is not a valid sweep name",
        "name: new\ntask: digits\n",
    ),
    "sensitivity_name_with_a_space": Case(
        ("sensitivity", "{dir}/sweep.yaml", "--name", "bad name", "--storage", "{db}"),
        2,
        "--name: 'bad name' is not a valid sweep name",
        "name: new\ntask: digits\n",
    ),
    "launch_without_config": Case(
        ("launch",), 2, "Missing argument 'CONFIG'; see sweep launch --help"
    ),
    "trials_without_name": Case(("trials",), 2, "Missing argument 'name'; see sweep trials --help"),
    "zero_trials": Case(
        (*LAUNCH, "--n-trials", "0"),
        2,
        "Invalid value for '--n-trials': Input should be greater than or equal to 1; see sweep "
        "launch --help",
        "name: new\ntask: digits\n",
    ),
    "negative_trials": Case(
        (*LAUNCH, "--n-trials", "-5"),
        2,
        "Invalid value for '--n-trials'",
        "name: new\ntask: digits\n",
    ),
    "status_interval_zero": Case(
        ("status", "--interval", "0", "--storage", "{db}"),
        2,
        "Invalid value for '--interval'",
    ),
    "unknown_option": Case(
        ("trials", "keep", "--bogus", "--storage", "{db}"),
        2,
        "No such option: --bogus; see sweep trials --help",
    ),
    "unknown_command": Case(
        ("lanuch",), 2, "No such command 'lanuch'. Did you mean 'launch'?; see sweep --help"
    ),
    "objective_both_max_and_min": Case(
        (
            "pareto",
            "keep",
            "--objective",
            "accuracy:max",
            "--objective",
            "accuracy:min",
            "--storage",
            "{db}",
        ),
        2,
        "--objective: 'accuracy' is given as both max and min; give it once",
    ),
    "negative_amount": Case(
        LAUNCH,
        2,
        "search_space.amount.min: Input should be greater than or equal to 0",
        "name: new\ntask: digits\nsearch_space: {amount: {min: -0.2}}\n",
    ),
    "unknown_task_path": Case(
        LAUNCH,
        2,
        "task: cannot import 'no_such_pkg.tasks'",
        "name: new\ntask: no_such_pkg.tasks:make\n",
    ),
    "task_fails_to_import": Case(
        LAUNCH,
        2,
        "task: importing 'broken_task' failed: SyntaxError",
        "name: new\ntask: broken_task:make\n",
        files=(("broken_task.py", "def make(:\n    pass\n"),),
    ),
    "task_import_raises": Case(
        LAUNCH,
        2,
        "task: importing 'needs_dep' failed: ImportError: install nonexistent_dep",
        "name: new\ntask: needs_dep:make\n",
        files=(("needs_dep.py", "raise ImportError('install nonexistent_dep')\n"),),
    ),
    "no_prunable_layers": Case(
        LAUNCH,
        2,
        "task: the model has no prunable layer (no Conv or Linear module)",
        "name: new\ntask: flat_task.py:make\nbudget: {n_trials: 2}\n",
        files=(("flat_task.py", NO_LAYERS_TASK),),
        subprocess=True,
    ),
    "dynamic_order_without_linear_layers": Case(
        LAUNCH,
        2,
        "search_space.orders: prune_dynamic quantizes Linear and LSTM layers, and this model has "
        "none; remove prune_dynamic",
        "name: new\ntask: conv_task.py:make\nsearch_space: {orders: [prune_dynamic]}\n",
        files=(("conv_task.py", CONV_TASK),),
        subprocess=True,
    ),
    "model_cannot_be_exported": Case(
        LAUNCH,
        2,
        "task: tiny: the model could not be exported to ONNX (",
        "name: new\ntask: branchy_task.py:make\n",
        files=(("branchy_task.py", BRANCHY_TASK),),
        subprocess=True,
    ),
    "runtime_unknown": Case(
        LAUNCH,
        2,
        "latency.runtime: Input should be 'onnxruntime'",
        "name: new\ntask: digits\nlatency: {runtime: tensorrt}\n",
    ),
    "unreachable_storage": Case(
        ("status", "--storage", f"postgresql+psycopg://sweep:{PASSWORD}@127.0.0.1:{{port}}/x"),
        2,
        "cannot open database postgresql+psycopg://sweep:***@127.0.0.1:",
    ),
    "dashboard_unreachable_storage": Case(
        ("dashboard", "--storage", f"postgresql+psycopg://sweep:{PASSWORD}@127.0.0.1:{{port}}/x"),
        2,
        "cannot open database postgresql+psycopg://sweep:***@127.0.0.1:",
    ),
    "dashboard_port_out_of_range": Case(
        ("dashboard", "--port", "70000", "--storage", "{db}"),
        2,
        "--port: 70000 is not a port; use 1 to 65535 (0: any free port)",
    ),
    "dashboard_short_token": Case(
        ("dashboard", "--token", "secret", "--storage", "{db}"),
        2,
        "--token: use at least 16 characters (leave it out to get one)",
    ),
    "dashboard_unknown_host": Case(
        ("dashboard", "--host", "no-such-host.invalid", "--storage", "{db}"),
        2,
        "--host: 'no-such-host.invalid' is not an address of this machine",
    ),
    "dashboard_host_of_another_machine": Case(
        ("dashboard", "--host", "192.0.2.1", "--port", "0", "--storage", "{db}"),
        2,
        "--host/--port: cannot listen on 192.0.2.1:0",
    ),
    "wrong_storage_scheme": Case(
        ("status", "--storage", "mysql://sweep@localhost/x"),
        2,
        "unsupported database URL 'mysql://sweep@localhost/x': only SQLite and PostgreSQL",
    ),
    "unknown_sweep": Case(
        ("pareto", "ghost", "--storage", "{db}"),
        2,
        "sweep 'ghost' not found in sqlite:///",
    ),
    "unknown_sweep_status": Case(
        ("status", "ghost", "--storage", "{db}"), 2, "run `sweep status` to list"
    ),
    "where_unknown_column": Case(
        ("pareto", "keep", "--where", "speed > 1", "--storage", "{db}"), 2, "unknown name 'speed'"
    ),
    "where_sql_injection": Case(
        ("trials", "keep", "--where", "accuracy > 0; DROP TABLE trials", "--storage", "{db}"),
        2,
        "invalid --where expression",
    ),
    "where_sql_in_value": Case(
        ("trials", "keep", "--where", "order == 'x' OR 1=1 --", "--storage", "{db}"),
        2,
        "invalid --where expression",
    ),
    "bad_format": Case(
        ("status", "--format", "xml", "--storage", "{db}"), 2, "--format: 'xml' is not one of"
    ),
    "ray_address_does_not_answer": Case(
        (*LAUNCH, "--address", "127.0.0.1:{port}"),
        2,
        "ray_address: nothing answers at 127.0.0.1:",
        "name: new\ntask: digits\n",
        subprocess=True,
    ),
    "ray_address_auto_finds_a_stopped_cluster": Case(
        (*LAUNCH, "--address", "auto"),
        2,
        "ray_address: nothing answers at 127.0.0.1:",
        "name: new\ntask: digits\n",
        subprocess=True,
        env=(("RAY_ADDRESS", "127.0.0.1:{port}"),),
    ),
    # The YAML reader's limits: refused before anything is dumped, imported or started.
    "yaml_billion_laughs_in_task_settings": Case(
        (*LAUNCH, "--name", "other"),
        2,
        "over the limit of 100,000; write the values out",
        "name: new\ntask: digits\ntask_settings:\n  a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"  {b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n"
            for a, b in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ),
    "yaml_nested_50000_deep": Case(
        LAUNCH,
        2,
        "sweep.yaml: line 3: nested more than 64 levels deep",
        "name: new\ntask: digits\ntask_settings: {a: " + "[" * 50_000 + "]" * 50_000 + "}\n",
    ),
    "yaml_nested_deep_through_aliases": Case(
        LAUNCH,
        2,
        "nests more than 64 levels deep through its aliases",
        "name: new\ntask: digits\ntask_settings:\n  a0: &a0 "
        + "[" * 40
        + "1"
        + "]" * 40
        + "\n"
        + "".join(f"  a{i}: &a{i} " + "[" * 40 + f"*a{i - 1}" + "]" * 40 + "\n" for i in (1, 2)),
    ),
    "yaml_duplicate_key": Case(
        LAUNCH,
        2,
        "sweep.yaml: line 4: duplicate key 'budget' (first on line 3); keep one",
        "name: new\ntask: digits\nbudget: {n_trials: 3}\nbudget: {n_trials: 300}\n",
    ),
    "yaml_duplicate_key_nested": Case(
        LAUNCH,
        2,
        "line 3: duplicate key 'n_trials' (first on line 3)",
        "name: new\ntask: digits\nbudget: {n_trials: 3, n_trials: 4}\n",
    ),
    "boolean_for_a_count": Case(
        LAUNCH,
        2,
        "budget.n_trials: expected a number, not true/false",
        "name: new\ntask: digits\nbudget: {n_trials: true}\n",
    ),
    "boolean_for_an_amount": Case(
        LAUNCH,
        2,
        "search_space.amount.max: expected a number, not true/false",
        "name: new\ntask: digits\nsearch_space: {amount: {max: false}}\n",
    ),
    "nan_amount": Case(
        LAUNCH,
        2,
        "search_space.amount.min: Input should be a finite number",
        "name: new\ntask: digits\nsearch_space: {amount: {min: .nan}}\n",
    ),
    "infinite_constraint": Case(
        LAUNCH,
        2,
        "search_space.constraints.min_sparsity: Input should be a finite number",
        "name: new\ntask: digits\nsearch_space: {constraints: {min_sparsity: .inf}}\n",
    ),
    "apply_task_setting_nested_too_deep": Case(
        (
            "apply",
            "{dir}/recipe.json",
            "--task",
            "digits",
            "-o",
            "{dir}/m.onnx",
            "--task-setting",
            "width=" + "[" * 100 + "]" * 100,
        ),
        2,
        "--task-setting: width: line 1: nested more than 64 levels deep",
        files=(("recipe.json", OTHER_MODEL_RECIPE),),
    ),
    "task_setting_the_task_does_not_take": Case(
        LAUNCH,
        2,
        "task_settings: got an unexpected keyword argument 'widht' (the task 'digits' takes:",
        "name: new\ntask: digits\ntask_settings: {widht: 8}\n",
    ),
    "ray_address_malformed": Case(
        (*LAUNCH, "--address", "head-node"),
        2,
        "ray_address: 'head-node' is not auto, HOST:PORT or ray://HOST:PORT",
        "name: new\ntask: digits\n",
        subprocess=True,
    ),
    "recipe_for_another_model": Case(
        ("apply", "{dir}/recipe.json", "--task", "digits", "-o", "{dir}/model.onnx"),
        2,
        "'features.0' is not a prunable layer of this model",
        files=(("recipe.json", OTHER_MODEL_RECIPE),),
    ),
    "apply_output_is_a_folder": Case(
        ("apply", "{dir}/recipe.json", "--task", "digits", "-o", "{dir}"),
        2,
        "it is a folder; give a file in it, e.g.",
        files=(("recipe.json", OTHER_MODEL_RECIPE),),
    ),
    "apply_output_folder_missing": Case(
        ("apply", "{dir}/recipe.json", "--task", "digits", "-o", "{dir}/missing/model.pt"),
        2,
        "/missing does not exist; create it or write elsewhere",
        files=(("recipe.json", OTHER_MODEL_RECIPE),),
    ),
    "apply_device_unknown": Case(
        ("apply", "{dir}/recipe.json", "--task", "digits", "-o", "{dir}/m.onnx", "--device", "tpu"),
        2,
        "--device: 'tpu' is not one of cpu, cuda or cuda:N",
        files=(("recipe.json", OTHER_MODEL_RECIPE),),
    ),
    "apply_device_cuda_without_gpu": Case(
        (
            "apply",
            "{dir}/recipe.json",
            "--task",
            "digits",
            "-o",
            "{dir}/m.onnx",
            "--device",
            "cuda",
        ),
        2,
        "--device: cuda is not available (torch",
        files=(("recipe.json", OTHER_MODEL_RECIPE),),
    ),
    "recommend_output_folder_missing": Case(
        (*RECOMMEND, "-o", "{dir}/missing/r.json", "--storage", "{db}"),
        2,
        "/missing does not exist; create it or write elsewhere",
    ),
    "recommend_output_is_a_folder": Case(
        (*RECOMMEND, "-o", "{dir}", "--storage", "{db}"),
        2,
        "it is a folder; give a file in it, e.g.",
    ),
    "disk_full_writing_a_listing": Case(
        ("trials", "keep", "--format", "json", "-o", "{dir}/all.json", "--storage", "{db}"),
        1,
        "the disk is full or the file reached its size limit (File too large)",
        file_size_limit=40_000,  # above SQLite's 32 KiB shared-memory file, below the listing
        subprocess=True,
    ),
    "disk_full_while_quantizing": Case(
        ("apply", "recipe.json", "--task", "tiny_task:make", "-o", "{dir}/model.onnx"),
        1,
        "cannot write temporary files while quantizing: the disk is full or a file reached its "
        "size limit (File too large)",
        files=(("tiny_task.py", TINY_TASK), ("recipe.json", TINY_RECIPE)),
        # Below the model files the runtime's quantizer writes to TMPDIR (tens of KB).
        file_size_limit=8_000,
        subprocess=True,
    ),
    "disk_full_writing_a_plot": Case(
        ("plot", "keep", "-o", "{dir}", "--storage", "{db}"),
        1,
        "keep.html: the disk is full or the file reached its size limit (File too large)",
        file_size_limit=1_000_000,  # above the PNG (about 40 KB), below the HTML (about 5 MB)
        subprocess=True,
    ),
}

CASES.update(
    {
        "where_too_many_comparisons": Case(
            ("trials", "keep", "--where", " and ".join(["number >= 0"] * 101), "--storage", "{db}"),
            2,
            "--where: more than 100 comparisons, over the limit",
        ),
        "where_too_many_comparisons_over_several_options": Case(
            (
                "pareto",
                "keep",
                *(["--where", " and ".join(["accuracy > 0"] * 40)] * 3),
                "--storage",
                "{db}",
            ),
            2,
            "--where: more than 100 comparisons, over the limit",
        ),
        "where_3000_comparisons": Case(
            (
                "trials",
                "keep",
                "--where",
                " and ".join(["number >= 0"] * 3000),
                "--storage",
                "{db}",
            ),
            2,
            "--where: 47,995 characters, over the limit of 10,000",
        ),
        "where_long_bad_expression_shown_short": Case(
            ("trials", "keep", "--where", "accuracy >= 0.5 and " + "x" * 5000, "--storage", "{db}"),
            2,
            "...': unknown name 'xxxx",
        ),
    }
)

# A store that is not ours, under every command that reads one: `{dir}/other.db` holds it.
FOREIGN = {
    "optuna": "other.db is an Optuna storage, not a sweep store",
    "sqlite": "other.db is a database of something else (tables notes), not a sweep store",
    "text": "other.db is not a SQLite database (not a sweep store)",
    "empty": "other.db is an empty file, not a sweep store yet; `sweep launch` creates a store",
    "missing": "no sweep store at",
}
OTHER = "sqlite:///{dir}/other.db"
READERS: dict[str, tuple[str, ...]] = {
    "status": ("status", "--storage", OTHER),
    "pareto": ("pareto", "keep", "--storage", OTHER),
    "trials": ("trials", "keep", "--storage", OTHER),
    "layers": ("layers", "keep", "--storage", OTHER),
    "best": ("best", "keep", "--storage", OTHER),
    "recommend": ("recommend", "keep", "--minimize", "latency_ms", "--storage", OTHER),
    "export": ("export", "keep", "--optuna-storage", "sqlite:///{dir}/o.db", "--storage", OTHER),
    "plot": ("plot", "keep", "-o", "{dir}", "--storage", OTHER),
    "resume": ("resume", "keep", "--storage", OTHER),
    "remeasure": ("remeasure", "keep", "--storage", OTHER),
    "dashboard": ("dashboard", "--port", "0", "--storage", OTHER),
}
for _kind, _expected in FOREIGN.items():
    for _command, _argv in READERS.items():
        CASES[f"foreign_store_{_kind}_{_command}"] = Case(_argv, 2, _expected, foreign=_kind)
    if _kind not in ("empty", "missing"):  # a launch creates a store there
        CASES[f"foreign_store_{_kind}_launch"] = Case(
            ("launch", "{dir}/sweep.yaml", "--storage", OTHER),
            2,
            _expected,
            "name: new\ntask: digits\n",
            foreign=_kind,
        )

SLOW = {"no_prunable_layers", "recipe_for_another_model"}  # train digits
# Cases whose bad input is only bad on a machine without a CUDA device.
CPU_ONLY = {"apply_device_cuda_without_gpu"}


def _keep(url: str) -> None:
    """The sweep stored before each case; every case must leave it as it was."""
    recipe = Recipe.from_dict(
        {"order": "prune_ptq", "layers": {name: {"amount": 0.5} for name in LAYERS}}
    ).to_dict()
    with Store(url) as store:
        store.create_sweep("keep", {"budget": {"n_trials": 30}}, {"accuracy": "max"})
        records = [
            TrialRecord(number=n, state="COMPLETE", recipe=recipe, metrics={"accuracy": n / 30})
            for n in range(30)
        ]
        store.record_trials("keep", records)
        store.set_sweep_status("keep", "FINISHED")


def _snapshot(url: str) -> pd.DataFrame:
    with Store(url) as store:
        return store.trials("keep")[["number", "state", "accuracy", "recipe"]]


def _limit_file_size(limit: int | None) -> None:
    if limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def run_sweep_cli(
    argv: list[str],
    cwd: Path,
    *,
    file_size_limit: int | None = None,
    code: str = "",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``sweep ARGV`` in a subprocess; ``code`` runs first, in the same process; ``env`` adds
    environment variables."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    env.pop("SWEEP_STORAGE", None)
    program = f"{code}\nfrom sweep.cli import main\nmain()"
    return subprocess.run(
        [sys.executable, "-c", program, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: _limit_file_size(file_size_limit),
    )


def _in_process(
    argv: list[str],
    cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> subprocess.CompletedProcess[str]:
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("SWEEP_STORAGE", raising=False)
    code, out, err = run_cli(monkeypatch, capsys, *argv)
    return subprocess.CompletedProcess(argv, code, out, err)


def check_one_error_line(result: subprocess.CompletedProcess[str], code: int, expected: str) -> str:
    """The run exited ``code`` with exactly one ``error:`` line, its last, holding ``expected``."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:], result.stderr[-3000:]
    assert expected in errors[0], errors[0]
    return errors[0]


def _marks(case_id: str) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.slow] if case_id in SLOW else []
    if case_id in CPU_ONLY:
        marks.append(pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device exists"))
    return marks


def _files(folder: Path) -> set[Path]:
    """The files under ``folder``, but Python's bytecode caches and SQLite's own side files."""
    return {
        path.relative_to(folder)
        for path in folder.rglob("*")
        if "__pycache__" not in path.parts and not path.name.startswith("store.db-")
    }


def _contents(folder: Path) -> dict[Path, bytes]:
    """The bytes of every file in ``folder`` but the sweep store's."""
    return {
        path: path.read_bytes()
        for path in map(folder.joinpath, _files(folder))
        if path.is_file() and path.name != "store.db"
    }


def _write_foreign(path: Path, kind: str) -> None:
    """A file that is not a sweep store at ``path`` (``missing``: none)."""
    if kind == "optuna":
        study = optuna.create_study(storage=f"sqlite:///{path}", study_name="keep")
        study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=2)
    elif kind == "sqlite":
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE notes (body TEXT)")
            connection.execute("INSERT INTO notes VALUES ('keep this')")
        connection.close()
    elif kind == "text":
        path.write_text("name,accuracy\nkeep,0.9\n")
    elif kind == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("case_id", [pytest.param(c, marks=_marks(c)) for c in CASES])
def test_bad_input(
    case_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = CASES[case_id]
    db = f"sqlite:///{tmp_path / 'store.db'}"
    _keep(db)
    before = _snapshot(db)
    if case.config:
        (tmp_path / "sweep.yaml").write_text(case.config)
    for name, text in case.files:
        (tmp_path / name).write_text(text)
    if case.foreign:
        _write_foreign(tmp_path / "other.db", case.foreign)
    fill = {"db": db, "dir": str(tmp_path), "port": str(_closed_port())}
    argv = [arg.format(**fill) for arg in case.argv]
    files_before = _files(tmp_path)
    bytes_before = _contents(tmp_path)
    if case.subprocess:
        env = {name: value.format(**fill) for name, value in case.env}
        result = run_sweep_cli(argv, tmp_path, file_size_limit=case.file_size_limit, env=env)
    else:
        result = _in_process(argv, tmp_path, monkeypatch, capsys)
    line = check_one_error_line(result, case.code, case.expected)
    assert PASSWORD not in result.stdout + result.stderr
    assert len(line) < 600, line  # one readable line, not a dump
    pd.testing.assert_frame_equal(_snapshot(db), before)
    assert _files(tmp_path) == files_before  # no partial output file, no temporary one left
    assert _contents(tmp_path) == bytes_before  # not a byte of the user's files changed


@pytest.mark.slow
def test_disk_full_while_a_sweep_writes(tmp_path: Path) -> None:
    """The store's disk fills up mid-sweep: exit 1 with one line, what was stored is intact.

    The file size limit is set once Ray runs (Ray's own processes keep theirs), so the first
    write of the store that grows past it fails as a full disk does."""
    db = f"sqlite:///{tmp_path / 'store.db'}"
    _keep(db)
    before = _snapshot(db)
    (tmp_path / "sweep.yaml").write_text(
        "name: new\ntask: synthetic\nbudget: {n_trials: 200}\n"
        "task_settings: {trial_seconds: 0.0, n_layers: 30}\n"
    )
    limit_after_ray = f"""
import sweep._ray_session as ray_session
from tests.sweep.test_errors import _limit_file_size
connect = ray_session.connect_ray
def connect_then_limit(address, task=None):
    connect(address, task)
    _limit_file_size({(tmp_path / "store.db").stat().st_size + 64 * 1024})
ray_session.connect_ray = connect_then_limit
"""
    argv = ["launch", str(tmp_path / "sweep.yaml"), "--storage", db]
    result = run_sweep_cli(argv, tmp_path, code=limit_after_ray)
    argv_done = check_one_error_line(result, 1, "the disk is full or the file reached its size")
    assert "`sweep resume new` continues this sweep" in argv_done
    pd.testing.assert_frame_equal(_snapshot(db), before)
    with Store(db) as store:
        # FAILED is the driver's last write. On a full disk it may find no room either (in
        # SQLite's WAL it fits only where the failed commit left some): the sweep then stays
        # RUNNING, its driver gone, and `sweep resume` takes it over as the error line says.
        assert store.get_sweep("new").status in ("FAILED", "RUNNING")
        assert len(store.trials("new")) < 200  # it stopped when the disk was full
    # Room again: the resumed sweep finishes its budget, no stored trial lost or run twice.
    resumed = run_sweep_cli(["resume", "new", "--storage", db], tmp_path)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    with Store(db) as store:
        trials = store.trials("new")
        assert store.get_sweep("new").status == "FINISHED"
    assert sorted(trials["number"]) == list(range(200))
    assert set(trials["state"]) == {"COMPLETE"}
    pd.testing.assert_frame_equal(_snapshot(db), before)


def test_recipe_for_another_model_is_one_line() -> None:
    """The engine-level twin of the table's `recipe_for_another_model` row, on a model with no
    trained baseline: a recipe naming layers the model lacks raises a one-line RecipeError."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    example = torch.zeros(1, 1, 8, 8)
    model(example)
    recipe = Recipe.from_dict({"order": "prune_ptq", "layers": {"encoder.0": {"amount": 0.5}}})
    with pytest.raises(RecipeError) as raised:
        apply_recipe(model, recipe, example)
    message = str(raised.value)
    assert "\n" not in message and "encoder.0" in message


def test_password_never_printed(tmp_path: Path) -> None:
    """A password in a PostgreSQL URL: not in the error, not in any output line."""
    url = f"postgresql+psycopg://sweep:{PASSWORD}@127.0.0.1:{_closed_port()}/x"
    for argv in (["status", "--storage", url], ["trials", "a", "--storage", url]):
        result = run_sweep_cli(argv, tmp_path)
        check_one_error_line(result, 2, "sweep:***@127.0.0.1")
        assert PASSWORD not in result.stdout + result.stderr
