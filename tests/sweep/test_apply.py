"""``sweep apply`` on the real ``digits`` task: the int8 model is saved, reloads with the
documented calls and scores what apply reported; recipes for another model are clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import trials
from sweep import _apply
from sweep._apply import DeviceError, check_device
from sweep._output import write_atomically
from tests.sweep.cli_runner import run_cli
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
    "metrics": {"accuracy": 0.97, "compressed_bytes": 20000.0, "latency_ms": 1.0},
}


def test_apply_saves_an_int8_model_that_reloads_and_scores_as_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(json.dumps(_recipe(FULL, source=SOURCE)))
    model_path = tmp_path / "model.pt"
    code, out, err = run_cli(monkeypatch, capsys, "apply", str(recipe_path), "-o", str(model_path))
    assert code == 0, err
    assert "stored (trial 7 of demo)" in out and "97.00%" in out  # the stored trial beside
    assert "trials.load_int8" in err

    saved = torch.load(model_path, weights_only=True)  # plain tensors and values only
    assert saved["recipe"]["layers"]["conv1.0"]["method"] == "structured"
    task = trials.load_task("digits")
    reloaded = trials.load_int8(model_path, DigitsNet(), task.example_input())
    accuracy = task.evaluate(reloaded, torch.device("cpu"))["accuracy"]
    assert accuracy == pytest.approx(saved["metrics"]["accuracy"])
    assert f"{100 * accuracy:.2f}%" in out
    # Really int8 and really pruned: quantized weights, fewer conv1 output channels.
    conv1 = dict(reloaded.named_modules())["conv1.0"]
    assert conv1.weight().dtype == torch.qint8
    assert conv1.weight().shape[0] < dict(DigitsNet().named_modules())["conv1.0"].out_channels

    code, out, err = run_cli(  # the same comparison for scripts
        monkeypatch, capsys, "apply", str(recipe_path), "-o", str(model_path), "--format", "json"
    )
    assert code == 0, err
    rows = {row["metric"]: row for row in json.loads(out)}
    assert rows["accuracy"]["stored"] == 0.97 and 0 < rows["accuracy"]["applied"] <= 1
    assert rows["fp32_size_bytes"]["applied"] > rows["size_bytes"]["applied"]


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
        ({**_recipe(FULL), "schema_version": 2}, (), "schema_version: 2 is not supported"),
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
    model_path = tmp_path / "model.pt"
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
    target = tmp_path / "model.pt"
    save = _apply._save_model(torch.nn.Linear(2, 2), trials.Recipe(), {})
    with pytest.raises(RuntimeError, match="boom"):  # not a disk error: it goes on as it was
        write_atomically(target, save)
    assert list(tmp_path.iterdir()) == []
