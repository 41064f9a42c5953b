"""``examples/mobilenet``: a user's torchvision model (MobileNetV3-Small) wrapped by a task file.

Its plain-torch fallback ``mobilenet_v3.py`` is torchvision's network under torchvision's names;
the folder, copied outside the repo, runs through ``sweep launch`` (task given by file path),
``sweep recommend`` and ``sweep apply``; the recommended trial's own int8 file (kept in the
store) and the one apply writes score in ONNX Runtime alone what was stored with them.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml
from torch import nn

import trials
from storage import Store
from sweep import load_config
from tests.sweep.cli_runner import run_cli
from tests.sweep.test_apply import _score_in_onnxruntime_alone

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mobilenet"
TASK = f"{EXAMPLE / 'mobilenet_task.py'}:make_task"
# Seconds per trial on one CPU: a quarter-width model on few images, one baseline epoch (its
# accuracy stays near chance: this checks the path, not the training).
TEST_SIZE = {
    "width_mult": 0.25,
    "n_train": 256,
    "n_calibration": 128,
    "n_validation": 256,
    "epochs": 1,
}


def _modules() -> tuple[ModuleType, ModuleType]:
    """The task module, loaded by file as ``sweep`` loads it, and the model module beside it
    (importable by name once the task file is loaded, as on the driver and the workers)."""
    factory = trials.resolve_task_factory(TASK)
    return sys.modules[factory.__module__], importlib.import_module("mobilenet_v3")


def test_the_plain_torch_model_is_torchvisions_mobilenet_v3_small() -> None:
    """Names, shapes and sizes as torchvision 0.28's ``mobilenet_v3_small`` (compared key by key
    with it, outside this suite, where it does not import)."""
    _, mobilenet_v3 = _modules()
    full = mobilenet_v3.mobilenet_v3_small()
    assert sum(p.numel() for p in full.parameters()) == 2_542_856  # torchvision's documented size
    model = mobilenet_v3.mobilenet_v3_small(num_classes=10)
    state = model.state_dict()
    assert len(state) == 244
    assert sum(p.numel() for p in model.parameters()) == 1_528_106
    shapes = {
        "features.0.0.weight": (16, 3, 3, 3),
        "features.1.block.0.0.weight": (16, 1, 3, 3),  # no expansion in the first block
        "features.1.block.1.fc1.weight": (8, 16, 1, 1),
        "features.4.block.2.fc2.bias": (96,),
        "features.11.block.3.1.running_var": (96,),
        "features.12.0.weight": (576, 96, 1, 1),
        "classifier.0.weight": (1024, 576),
        "classifier.3.weight": (10, 1024),
    }
    assert {name: tuple(state[name].shape) for name in shapes} == shapes
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert {(m.eps, m.momentum) for m in batchnorms} == {(0.001, 0.01)}
    quarter = mobilenet_v3.mobilenet_v3_small(num_classes=10, width_mult=0.25)
    assert sum(p.numel() for p in quarter.parameters()) == 119_842
    with torch.no_grad():  # five stride-2 stages: a 32x32 image reaches 1x1
        assert quarter.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_the_task_gives_rgb_shapes_and_every_layer_but_the_output_can_lose_channels() -> None:
    task_module, _ = _modules()
    task = trials.load_task(TASK, TEST_SIZE)
    assert task.settings == {
        "seed": 0,
        "n_train": 256,
        "n_calibration": 128,
        "epochs": 1,
        "lr": 3e-3,
        "data_version": 1,
        "width_mult": 0.25,
    }
    model = task.create_model()
    source = task_module.model_source()
    expected = "mobilenet_v3" if source == "mobilenet_v3.py" else "torchvision.models.mobilenetv3"
    assert type(model).__module__ == expected
    example = task.example_input()
    assert example.shape == (32, 3, 32, 32)
    layers = trials.prunable_layers(model)
    assert len(layers) == 54  # stem, 9 expand, 11 depthwise, 9 x 2 SE, 11 project, head, 2 Linear
    reasons = trials.structured_prunable(model, example)
    assert {name: why for name, why in reasons.items() if why is not None} == {
        "classifier.3": "its output channels are the model's output"
    }
    with pytest.raises(ValueError, match="width_mult 0 must be positive"):
        trials.load_task(TASK, {"width_mult": 0})


@pytest.mark.parametrize(
    ("raised", "falls_back"),
    [
        ("RuntimeError('operator torchvision::nms does not exist')", True),  # a CUDA wheel here
        ("ImportError('libcudart.so.12: cannot open shared object file')", True),
        ("RuntimeError('something else broke')", False),
    ],
)
def test_only_torchvisions_own_import_failures_fall_back(
    raised: str, falls_back: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_module, _ = _modules()
    fake = tmp_path / "torchvision"
    fake.mkdir()
    (fake / "__init__.py").write_text(f"raise {raised}\n")
    for name in [name for name in sys.modules if name.split(".")[0] == "torchvision"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    task_module._torchvision_model.cache_clear()
    try:
        if falls_back:
            assert task_module.model_source() == "mobilenet_v3.py"
            model = trials.load_task(TASK, TEST_SIZE).create_model()
            assert type(model).__module__ == "mobilenet_v3"
        else:
            with pytest.raises(RuntimeError, match="something else broke"):
                task_module.model_source()
    finally:
        task_module._torchvision_model.cache_clear()  # the real answer, next time it is asked


def test_state_dicts_load_both_ways_with_torchvision() -> None:
    """Where torchvision imports (not beside this project's CPU torch): the same weights from
    the same seed, and the same logits after loading either one's state_dict into the other."""
    task_module, mobilenet_v3 = _modules()
    torchvision_model = task_module._torchvision_model()
    if torchvision_model is None:
        pytest.skip("torchvision does not import here")
    for width_mult in (1.0, 0.5):
        torch.manual_seed(0)
        theirs = torchvision_model(num_classes=10, width_mult=width_mult).eval()
        torch.manual_seed(0)
        ours = mobilenet_v3.mobilenet_v3_small(num_classes=10, width_mult=width_mult).eval()
        for name, tensor in theirs.state_dict().items():
            assert torch.equal(tensor, ours.state_dict()[name]), name
        with torch.no_grad():
            for parameter in theirs.parameters():
                parameter.normal_(0, 0.2)
        ours.load_state_dict(theirs.state_dict())
        theirs.load_state_dict(ours.state_dict())
        inputs = torch.randn(4, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(theirs(inputs), ours(inputs))


def test_the_example_config_names_the_task_file_beside_it() -> None:
    config = load_config(EXAMPLE / "sweep.yaml")
    assert config.task == "mobilenet_task.py:make_task"
    assert config.trial.round_to is None  # the runtime's channel multiple: 4 for onnxruntime
    # One amount per inverted residual block: 15 layer groups, not 54.
    assert config.search_space.tie == [[f"features.{block}.*"] for block in range(1, 12)]


def _config(folder: Path) -> dict[str, Any]:
    """The example's own sweep.yaml, shrunk to a test: 4 trials of a quarter-width model."""
    config = yaml.safe_load((folder / "sweep.yaml").read_text())
    config["task_settings"] = TEST_SIZE
    config["budget"] = {"n_trials": 4}
    config["trial"] = {**config["trial"], "calibration_batches": 2}
    # Timing is not under test: few repeats, and the front timed again for a second only (a
    # sweep that times its front again keeps the front's model files in the store).
    config["latency"] = {"warmup": 1, "repeats": 3, "remeasure_s": 1}
    return config


@pytest.mark.slow
def test_the_example_folder_runs_through_launch_recommend_and_apply(
    local_ray: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "my-models"  # a user's copy, outside the repo
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "sweep.yaml").write_text(yaml.safe_dump(_config(folder)))
    monkeypatch.chdir(folder)
    monkeypatch.delenv("SWEEP_STORAGE", raising=False)
    store = "sqlite:///sweeps.db"

    code, out, err = run_cli(monkeypatch, capsys, "launch", "sweep.yaml", "--storage", store)
    assert code == 0, err[-3000:]
    assert "Pareto front of mobilenet" in out
    with Store(store) as opened:
        done = opened.trials("mobilenet")
    assert list(done["state"]) == ["COMPLETE"] * 4, done["error"].tolist()

    # Any trial qualifies (the test-size baseline is barely trained): the smallest one.
    recommend = ["recommend", "mobilenet", "--storage", store, "--max-drop", "0.99"]
    recommend += ["--minimize", "compressed_bytes", "-o", "recipe.json"]
    code, out, err = run_cli(monkeypatch, capsys, *recommend)
    assert code == 0, err[-3000:]
    recipe = json.loads((folder / "recipe.json").read_text())
    # The sweep keeps the task file's absolute path: apply finds it from any directory.
    assert recipe["source"]["task"] == f"{folder.resolve() / 'mobilenet_task.py'}:make_task"
    assert recipe["source"]["task_settings"] == TEST_SIZE
    assert "features.4.block.2.fc1" in recipe["layers"]  # torchvision's names

    # The trial's own int8 file, kept in the store, scores in ONNX Runtime alone what it stored.
    number = recipe["source"]["trial"]
    with Store(store) as opened:
        [(runtime, data)] = opened.artifacts("mobilenet", [number]).values()
    assert runtime == "onnxruntime"
    (tmp_path / "trial.onnx").write_bytes(data)
    task = trials.load_task("mobilenet_task.py:make_task", TEST_SIZE)
    stored = float(done.set_index("number").loc[number, "accuracy"])
    assert _score_in_onnxruntime_alone(tmp_path / "trial.onnx", task, tmp_path) == stored

    # apply runs the recipe again; its file scores what apply measured and saved in it.
    code, out, err = run_cli(
        monkeypatch, capsys, "apply", "recipe.json", "-o", "model.onnx", "--storage", store
    )
    assert code == 0, err[-3000:]
    assert f"stored (trial {number} of mobilenet)" in out
    saved = trials.read_int8(folder / "model.onnx")
    accuracy = _score_in_onnxruntime_alone(folder / "model.onnx", task, tmp_path)
    assert accuracy == pytest.approx(saved["metrics"]["accuracy"], abs=1e-9)
