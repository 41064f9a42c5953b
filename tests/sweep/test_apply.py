"""``sweep apply`` on the real ``digits`` task: the int8 model is saved as its runtime's file,
loads in that runtime alone (nothing of this project, not even torch) and scores what apply
reported; recipes for another model are clear errors."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import trials
from sweep import _apply
from sweep._apply import DeviceError, check_device
from sweep._output import write_atomically
from tests.sweep.cli_runner import run_cli
from tests.trials.onnx_graph import int8_weights
from trials.tasks.digits import DigitsNet

LAYERS = ("conv1.0", "conv2.0", "conv3.0", "fc")


def _recipe(layers: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "order": "prune_ptq",
        "granularity": "per_channel",
        "finetune_epochs": 1,
        "calibration_batches": 2,
        "layers": layers,
        **extra,
    }


FULL = {
    "conv1.0": {"amount": 0.25, "method": "structured"},
    "conv2.0": {"amount": 0.5, "method": "unstructured"},
    "conv3.0": {"amount": 0.3, "method": "unstructured", "granularity": "per_tensor"},
    "fc": {"amount": 0.2, "method": "unstructured"},
}
SOURCE = {
    "sweep": "demo",
    "trial": 7,
    "task": "digits",
    "task_settings": {},
    "metrics": {
        "accuracy": 0.97,
        "compressed_bytes": 20000.0,
        "latency_ms": 1.0,
        "speedup": 3.3,
        "speedup_low": 3.1,
        "speedup_high": 3.5,
    },
}


def test_apply_saves_an_int8_model_that_reloads_and_scores_as_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(json.dumps(_recipe(FULL, source=SOURCE)))
    model_path = tmp_path / "model.onnx"
    code, out, err = run_cli(monkeypatch, capsys, "apply", str(recipe_path), "-o", str(model_path))
    assert code == 0, err
    assert "stored (trial 7 of demo)" in out and "97.00%" in out  # the stored trial beside
    assert "onnxruntime.InferenceSession" in err and "trials.load_int8" in err
    # The speedup timed again in rounds, with its 95% interval, beside the stored one's.
    [speedup_row] = [line for line in out.splitlines() if "│ speedup" in line]
    assert re.search(r"\d+\.\d\dx (slower )?\(\d+\.\d\d-\d+\.\d\d\)", speedup_row)
    assert "3.30x (3.10-3.50)" in speedup_row

    saved = trials.read_int8(model_path)  # the recipe and metrics ride inside the .onnx
    assert saved["recipe"]["layers"]["conv1.0"]["method"] == "structured"
    task = trials.load_task("digits")
    accuracy = _score_in_onnxruntime_alone(model_path, task, tmp_path)
    assert accuracy == pytest.approx(saved["metrics"]["accuracy"], abs=1e-9)
    assert f"{100 * accuracy:.2f}%" in out
    reloaded = trials.load_int8(model_path)
    assert task.evaluate(reloaded, torch.device("cpu"))["accuracy"] == pytest.approx(accuracy)
    # Really int8 and really pruned: int8 weights, fewer conv1 output channels.
    conv1 = int8_weights(reloaded)["conv1.0"].values
    assert conv1.dtype == np.int8
    assert conv1.shape[0] < dict(DigitsNet().named_modules())["conv1.0"].out_channels

    code, out, err = run_cli(  # the same comparison for scripts
        monkeypatch, capsys, "apply", str(recipe_path), "-o", str(model_path), "--format", "json"
    )
    assert code == 0, err
    rows = {row["metric"]: row for row in json.loads(out)}
    assert rows["accuracy"]["stored"] == 0.97 and 0 < rows["accuracy"]["applied"] <= 1
    assert rows["fp32_size_bytes"]["applied"] > rows["size_bytes"]["applied"]
    low, speedup, high = (rows[n]["applied"] for n in ("speedup_low", "speedup", "speedup_high"))
    assert low <= speedup <= high
    assert (rows["speedup_low"]["stored"], rows["speedup_high"]["stored"]) == (3.1, 3.5)


# Scores a model file on saved validation batches with onnxruntime and numpy only.
_STANDALONE = """
import sys
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1])
name = session.get_inputs()[0].name
data = np.load(sys.argv[2])
correct = total = 0
for index in range(len(data.files) // 2):
    inputs, targets = data[f"inputs{index}"], data[f"targets{index}"]
    logits = session.run(None, {name: inputs})[0]
    correct += int((logits.argmax(axis=1) == targets).sum())
    total += len(targets)
assert "torch" not in sys.modules and "trials" not in sys.modules
print(repr(correct / total))
"""


def _score_in_onnxruntime_alone(model: Path, task: trials.Task, folder: Path) -> float:
    data = folder / "validation.npz"
    arrays: dict[str, np.ndarray] = {}
    for index, (inputs, targets) in enumerate(task.validation_batches()):
        arrays[f"inputs{index}"], arrays[f"targets{index}"] = inputs.numpy(), targets.numpy()
    np.savez(data, **arrays)  # type: ignore[arg-type]
    done = subprocess.run(
        [sys.executable, "-c", _STANDALONE, str(model), str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout)


@pytest.mark.parametrize(
    ("document", "args", "message"),
    [
        (
            _recipe({"features.0": {"amount": 0.5, "method": "unstructured"}}, source=SOURCE),
            (),
            "'features.0' is not a prunable layer of this model",
        ),
        (
            _recipe({"conv1.0": {"amount": 0.5, "method": "unstructured"}}, source=SOURCE),
            (),
            "does not mention 3 prunable layer(s) of this model ('conv2.0', 'conv3.0', 'fc')",
        ),
        ({**_recipe(FULL), "schema_version": 3}, (), "schema_version: 3 is not supported"),
        (_recipe(FULL), (), "--task: the recipe file does not say which task it is for"),
        (_recipe(FULL), ("--task", "synthetic"), "is an analytic task with no model"),
    ],
)
def test_apply_rejects_recipes_that_do_not_fit_and_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    document: dict[str, Any],
    args: tuple[str, ...],
    message: str,
) -> None:
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(json.dumps(document))
    model_path = tmp_path / "model.onnx"
    code, _, err = run_cli(
        monkeypatch, capsys, "apply", str(recipe_path), "-o", str(model_path), *args
    )
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert not model_path.exists()


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:x", "CPU"])
def test_check_device_rejects_what_is_not_cpu_or_cuda(device: str) -> None:
    with pytest.raises(DeviceError, match=f"--device: '{device}' is not one of cpu, cuda"):
        check_device(device)


def test_check_device_accepts_cpu_and_needs_cuda_for_cuda() -> None:
    assert check_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert check_device("cuda:0") == torch.device("cuda:0")
        with pytest.raises(DeviceError, match="cuda:99 does not exist"):
            check_device("cuda:99")
    else:
        for device in ("cuda", "cuda:1"):
            with pytest.raises(DeviceError, match=f"--device: {device} is not available"):
                check_device(device)


def test_a_failed_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(_apply, "save_int8", fail)
    target = tmp_path / "model.onnx"
    save = _apply._save_model(torch.nn.Linear(2, 2), trials.Recipe(), {})
    with pytest.raises(RuntimeError, match="boom"):  # not a disk error: it goes on as it was
        write_atomically(target, save)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_when_saving_the_model_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model file is the last write of apply: a full disk there (the quantizer's temporary
    files fitted) is exit 1 with the file named, and no partial file."""

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_apply, "save_int8", full)
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(json.dumps(_recipe(FULL, source=SOURCE)))
    target = tmp_path / "model.onnx"
    code, _, err = run_cli(monkeypatch, capsys, "apply", str(recipe_path), "-o", str(target))
    assert code == 1, err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"error: -o: cannot write {target}: the disk is full or the file reached its size limit"
        )
    )
    assert not target.exists()
