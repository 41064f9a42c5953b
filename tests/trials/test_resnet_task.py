"""The built-in ``resnet``: torchvision's ResNet-18 in plain torch, with torchvision's names, on
the ``shapes`` images; structured pruning through its residual adds and downsample branches."""

from __future__ import annotations

import pytest
import torch

from trials import LatencySpec, LayerSpec, Recipe, load_task, prunable_layers, run_trial
from trials import structured_prunable as structured
from trials.tasks.resnet import ResNet

CPU = torch.device("cpu")
SMALL = {"width": 8, "blocks": [1, 1, 1, 1]}


def test_the_full_size_is_resnet18_with_torchvisions_names() -> None:
    model = ResNet(num_classes=10)
    layers = prunable_layers(model)
    assert len(layers) == 21
    assert layers[:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]
    assert {"layer2.0.downsample.0", "layer4.1.conv2", "fc"} <= set(layers)
    keys = set(model.state_dict())
    assert {"bn1.running_mean", "layer3.0.downsample.1.weight", "fc.bias"} <= keys
    # torchvision.models.resnet18(num_classes=10): 11,181,642 parameters.
    assert sum(p.numel() for p in model.parameters()) == 11_181_642


@pytest.mark.slow
def test_a_small_resnet_trains_and_loses_channels_through_its_residual_adds() -> None:
    task = load_task("resnet", SMALL)
    model = task.build_model()
    assert task.evaluate(model, CPU)["accuracy"] > 0.6
    layers = prunable_layers(model)
    reasons = structured(model, task.example_input())
    assert [name for name, why in reasons.items() if why is not None] == ["fc"]
    recipe = Recipe(
        layers={n: LayerSpec(0.5, "unstructured" if n == "fc" else "structured") for n in layers},
        order="prune_ptq",
        finetune_epochs=1,
    )
    result = run_trial(task, recipe, latency=LatencySpec(repeats=3))
    assert result.state == "COMPLETE", result.error
    assert result.metrics["removed_fraction"] > 0.6  # the next layers' inputs go too
    assert result.metrics["params"] < 0.4 * result.metrics["fp32_params"]
