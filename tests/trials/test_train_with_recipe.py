"""The example of a user's own training loop produces a model that matches its recipe."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trials.onnx_graph import int8_weights
from trials import LayerSpec, Recipe, load_int8

ROOT = Path(__file__).resolve().parents[2]
AMOUNTS = {"conv1.0": 0.2, "conv2.0": 0.6, "conv3.0": 0.75, "fc": 0.4}


@pytest.mark.parametrize("order", ["prune_ptq", "prune_qat", "prune_dynamic"])
def test_example_loop_matches_the_recipe(tmp_path: Path, order: str) -> None:
    recipe = Recipe(
        layers={
            name: LayerSpec(amount, granularity="per_channel" if name == "conv2.0" else None)
            for name, amount in AMOUNTS.items()
        },
        order=order,
        granularity="per_tensor",
    )
    recipe_path = tmp_path / "recipe.json"
    recipe_path.write_text(recipe.to_json())
    output = tmp_path / "int8.onnx"
    script = ROOT / "examples" / "train_with_recipe.py"
    run = subprocess.run(
        [sys.executable, str(script), str(recipe_path), "--epochs", "1", "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    int8_accuracy = float(run.stdout.split("int8 accuracy ")[1].split()[0])
    assert int8_accuracy > 0.8
    weights = int8_weights(load_int8(output))
    # Dynamic quantization makes the Linear layer int8 and leaves convolutions in float.
    assert sorted(weights) == (["fc"] if order == "prune_dynamic" else sorted(AMOUNTS))
    for name, weight in weights.items():
        zeros = int((weight.values == 0).sum())
        assert zeros >= round(AMOUNTS[name] * weight.values.size), name
        assert (weight.scale.size > 1) == (name == "conv2.0"), name
    assert json.loads(recipe_path.read_text())["order"] == order
