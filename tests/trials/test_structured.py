"""Structured (output-channel) pruning: real torch models, real torch-pruning, no mocks."""

from __future__ import annotations

import copy
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from trials import (
    LatencySpec,
    LayerSpec,
    Recipe,
    RecipeError,
    Task,
    _measure,
    apply_recipe,
    finalize,
    kept_channels,
    run_trial,
    structured_groups,
    structured_layout,
    structured_prunable,
)
from trials._train import train

CPU = torch.device("cpu")


def _cbr(cin: int, cout: int, **kwargs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False, **kwargs), nn.BatchNorm2d(cout), nn.ReLU()
    )


class Plain(nn.Module):
    """conv-bn-relu x2, pooled, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = _cbr(3, 16)
        self.c2 = _cbr(16, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(self.c1(x)).mean((2, 3)))


class Residual(nn.Module):
    """stem, then x + bn(conv(relu(bn(conv(x))))), pooled, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.conv1 = _cbr(16, 24)
        self.conv2 = nn.Sequential(nn.Conv2d(24, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.conv2(self.conv1(x))
        return self.fc(x.mean((2, 3)))


class ResidualOut(nn.Module):
    """The residual sum is the model's output: the convs feeding it cannot lose channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv1 = _cbr(16, 24)
        self.conv2 = nn.Sequential(nn.Conv2d(24, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return x + self.conv2(self.conv1(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: pointwise expand, depthwise (groups=channels), pointwise project."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 16)
        self.expand = nn.Sequential(
            nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU6()
        )
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.fc(x.mean((2, 3)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 64)
        self.fc2 = nn.Linear(64, 32)
        self.out = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Shared(nn.Module):
    """One conv applied twice: its input and output channels are one coupled group with stem."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.shared = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.shared(torch.relu(self.shared(x))))
        return self.fc(x.mean((2, 3)))


IMAGE = (3, 8, 8)


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    unprunable: dict[str, str]  # layer -> a phrase its reason contains
    groups: list[tuple[str, ...]]
    # structured amount per layer -> expected output channels after pruning, round_to 1 and 4
    amounts: dict[str, float]
    kept: dict[int, dict[str, int]]


CASES = {
    "plain": Case(
        Plain,
        IMAGE,
        {"fc": "model's output"},
        [("c1.0",), ("c2.0",), ("fc",)],
        {"c1.0": 0.5, "c2.0": 0.3},
        {1: {"c1.0": 8, "c2.0": 22}, 4: {"c1.0": 8, "c2.0": 24}},
    ),
    "residual": Case(
        Residual,
        IMAGE,
        {"fc": "model's output"},
        [("stem.0", "conv2.0"), ("conv1.0",), ("fc",)],
        # stem asks 0.25, conv2 0.5: the coupled group takes the maximum, 0.5.
        {"stem.0": 0.25, "conv2.0": 0.5, "conv1.0": 0.6},
        {
            1: {"stem.0": 8, "conv2.0": 8, "conv1.0": 10},
            4: {"stem.0": 8, "conv2.0": 8, "conv1.0": 12},
        },
    ),
    "residual_out": Case(
        ResidualOut,
        IMAGE,
        {"stem": "model's output (through add)", "conv2.0": "model's output (through add)"},
        [("stem", "conv2.0"), ("conv1.0",)],
        {"conv1.0": 0.75},
        {1: {"conv1.0": 6}, 4: {"conv1.0": 8}},
    ),
    "inverted_residual": Case(
        InvertedResidual,
        IMAGE,
        {"fc": "model's output"},
        [("stem.0", "project.0"), ("expand.0", "dw.0"), ("fc",)],
        # The depthwise conv is tied to the pointwise conv before it.
        {"expand.0": 0.5, "dw.0": 0.25, "stem.0": 0.4},
        {
            1: {"expand.0": 24, "dw.0": 24, "stem.0": 10, "project.0": 10},
            4: {"expand.0": 24, "dw.0": 24, "stem.0": 12, "project.0": 12},
        },
    ),
    "mlp": Case(
        MLP,
        (20,),
        {"out": "model's output"},
        [("fc1",), ("fc2",), ("out",)],
        {"fc1": 0.5, "fc2": 0.9},
        {1: {"fc1": 32, "fc2": 3}, 4: {"fc1": 32, "fc2": 4}},
    ),
    "shared": Case(
        Shared,
        IMAGE,
        {"fc": "model's output"},
        [("stem", "shared"), ("fc",)],
        {"shared": 0.5},
        {1: {"stem": 8, "shared": 8}, 4: {"stem": 8, "shared": 8}},
    ),
}


def _model(case: Case) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = case.build().eval()
    return model, torch.randn(4, *case.input_shape)


def _out_channels(model: nn.Module, name: str) -> int:
    return int(dict(model.named_modules())[name].weight.shape[0])


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _state_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


def _structured(amounts: dict[str, float], **kwargs: object) -> Recipe:
    layers = {name: LayerSpec(amount, "structured") for name, amount in amounts.items()}
    return Recipe(layers=layers, finetune_epochs=0, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(CASES))
def test_reports_output_layers_and_groups(name: str) -> None:
    case = CASES[name]
    model, example = _model(case)
    before = copy.deepcopy(model.state_dict())
    reasons = structured_prunable(model, example)
    assert {layer for layer, reason in reasons.items() if reason} == set(case.unprunable)
    for layer, phrase in case.unprunable.items():
        assert phrase in str(reasons[layer]), reasons[layer]
        assert "\n" not in str(reasons[layer])
    assert structured_groups(model, example) == case.groups
    # Asking is free: the model is left exactly as it was.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("round_to", [1, 4])
def test_removes_exactly_the_expected_channels(name: str, round_to: int) -> None:
    case = CASES[name]
    model, example = _model(case)
    expected_shape = model(example).shape
    params, size = _param_count(model), _state_bytes(model)
    pruned = apply_recipe(model, _structured(case.amounts, round_to=round_to), example)
    assert pruned is model
    for layer, channels in case.kept[round_to].items():
        assert _out_channels(model, layer) == channels, layer
    with torch.no_grad():
        assert model(example).shape == expected_shape
    assert _param_count(model) < params
    assert _state_bytes(model) < size
    # Coupled layers end up with the same channel count.
    for group in case.groups:
        assert len({_out_channels(model, layer) for layer in group}) == 1, group


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("round_to", [1, 4])
def test_the_layout_says_what_share_of_each_layer_an_amount_removes(
    name: str, round_to: int
) -> None:
    """``Removable.removed_share`` (what the layerwise sampler models a structured amount by)
    is the share of channels that pruning really removes, rounding included."""
    case = CASES[name]
    model, example = _model(case)
    layout = structured_layout(model, example)
    assert set(layout.removable) == {n for n, why in layout.prunable.items() if why is None}
    apply_recipe(model, _structured(case.amounts, round_to=round_to), example)
    for layer in case.kept[round_to]:
        group = next(g for g in layout.groups if layer in g)
        amount = max(case.amounts.get(member, 0.0) for member in group)
        removable = layout.removable[layer]
        removed = 1 - _out_channels(model, layer) / removable.count
        assert removable.removed_share(amount, round_to) == pytest.approx(removed), layer


@pytest.mark.parametrize("name", list(CASES))
def test_structured_on_an_unprunable_layer_is_a_recipe_error(name: str) -> None:
    case = CASES[name]
    for layer, phrase in case.unprunable.items():
        model, example = _model(case)
        with pytest.raises(
            RecipeError, match=rf"^layers\.{re.escape(layer)}: .*{re.escape(phrase)}"
        ):
            apply_recipe(model, _structured({layer: 0.5}), example)


def test_lowest_l2_channels_are_removed() -> None:
    model, example = _model(CASES["plain"])
    conv = model.c1[0]
    with torch.no_grad():
        conv.weight.mul_(0.01)
        keep = [1, 4, 6, 9, 10, 11, 13, 15]
        conv.weight[keep] *= 100.0 * torch.arange(1, 9).view(-1, 1, 1, 1)
    original = conv.weight.detach().clone()
    apply_recipe(model, _structured({"c1.0": 0.5}), example)
    assert torch.equal(model.c1[0].weight, original[keep])


def test_group_ranks_channels_over_all_members() -> None:
    model, example = _model(CASES["residual"])
    with torch.no_grad():
        model.stem[0].weight.mul_(0.01)
        model.conv2[0].weight.mul_(0.01)
        # Channels 0..7 matter in conv2 only: the group's joint L2 norm keeps them.
        model.conv2[0].weight[:8] *= 1000.0
    kept_weights = model.stem[0].weight.detach()[:8].clone()
    apply_recipe(model, _structured({"stem.0": 0.5}), example)
    assert torch.equal(model.stem[0].weight, kept_weights)


def test_unstructured_member_is_pulled_along_then_pruned_unstructured() -> None:
    model, example = _model(CASES["residual"])
    recipe = Recipe(
        layers={"stem.0": LayerSpec(0.5, "structured"), "conv2.0": LayerSpec(0.5)},
        finetune_epochs=0,
    )
    apply_recipe(model, recipe, example)
    weight = model.conv2[0].weight
    assert weight.shape[0] == 8  # lost the stem's channels
    assert int((weight == 0).sum()) == round(0.5 * weight.numel())  # then L1 on what is left
    assert int((model.stem[0].weight == 0).sum()) == 0


@pytest.mark.parametrize(
    ("channels", "amount", "round_to", "kept"),
    [
        (16, 0.5, 1, 8),
        (16, 0.5, 3, 9),
        (32, 0.3, 8, 24),
        (10, 0.99, 1, 1),  # never zero channels
        (10, 0.99, 4, 4),  # at least round_to
        (4, 0.5, 8, 4),  # never more than the layer has
        (16, 0.0, 8, 16),
        (1, 0.9, 1, 1),
    ],
)
def test_kept_channels(channels: int, amount: float, round_to: int, kept: int) -> None:
    assert kept_channels(channels, amount, round_to) == kept


def test_round_to_in_recipe_json() -> None:
    recipe = Recipe(layers={"c1.0": LayerSpec(0.5, "structured")}, round_to=8)
    data = json.loads(recipe.to_json())
    assert data["round_to"] == 8 and data["schema_version"] == 2
    assert data["layers"]["c1.0"]["method"] == "structured"
    assert Recipe.from_json(recipe.to_json()).to_dict() == recipe.to_dict()
    assert Recipe.from_dict({"layers": {}}).round_to == 1  # recipes written before round_to
    for bad in (0, -1, 1.5, True):
        with pytest.raises(RecipeError, match=r"^round_to"):
            Recipe.from_dict({"round_to": bad})


class ChannelShuffle(nn.Module):
    """A channel shuffle reshapes channels into 2 groups: removing one channel breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)
        self.unused = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x = self.c1(x)
        x = x.view(b, 2, 4, h, w).transpose(1, 2).reshape(b, 8, h, w)
        return self.fc(torch.relu(self.c2(x)).mean((2, 3)))


def test_what_torch_pruning_cannot_handle_is_reported() -> None:
    model = ChannelShuffle().eval()
    example = torch.randn(2, *IMAGE)
    reasons = structured_prunable(model, example)
    assert reasons["c1"] is not None and "cannot remove its channels" in reasons["c1"]
    assert reasons["c2"] is None
    assert reasons["unused"] is not None and "does not reach it" in reasons["unused"]
    with pytest.raises(RecipeError, match=r"^layers\.c1: "):
        apply_recipe(model, _structured({"c1": 0.5}), example)
    apply_recipe(model, _structured({"c2": 0.5}), example)
    assert model(example).shape == (2, 3)


@pytest.mark.parametrize("order", ["prune_ptq", "prune_qat", "prune_dynamic"])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_quantizes_after_structured_pruning(order: str, granularity: str) -> None:
    model, example = _model(CASES["inverted_residual"])
    recipe = Recipe(
        layers={
            "stem.0": LayerSpec(0.5, "structured"),
            "expand.0": LayerSpec(0.5, "structured"),
            "fc": LayerSpec(0.5),
        },
        order=order,
        granularity=granularity,
        finetune_epochs=0,
    )
    trainable = apply_recipe(model, recipe, example)
    if order == "prune_qat":
        trainable.train()
        optimizer = torch.optim.SGD(trainable.parameters(), lr=0.01)
        trainable(example).square().mean().backward()
        optimizer.step()
    int8 = finalize(trainable, recipe, [(example, torch.zeros(4))])
    assert int8(example).shape == (4, 10)
    assert _out_channels(model, "dw.0") == 24 and _out_channels(model, "project.0") == 8


# -- the digits task, end to end ------------------------------------------------------------------
CONVS = ("conv1.0", "conv2.0", "conv3.0")


@pytest.fixture(scope="module")
def unpruned(digits: Task) -> dict[str, dict[str, float]]:
    results = {}
    for granularity in ("per_tensor", "per_channel"):
        # Sizes, params and MACs do not depend on fine-tuning: skip it for the reference.
        recipe = Recipe(granularity=granularity, finetune_epochs=0)
        result = run_trial(digits, recipe, latency=LatencySpec(repeats=7))
        assert result.state == "COMPLETE", result.error
        results[granularity] = result.metrics
    return results


@pytest.mark.parametrize("order", ["prune_ptq", "prune_qat"])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_digits_structured_half_the_convs(
    digits: Task, unpruned: dict[str, dict[str, float]], order: str, granularity: str
) -> None:
    recipe = Recipe(
        layers={name: LayerSpec(0.5, "structured") for name in CONVS},
        order=order,
        granularity=granularity,
        finetune_epochs=1 if order == "prune_ptq" else 0,  # prune_qat trains in its QAT epoch
    )
    result = run_trial(digits, recipe, latency=LatencySpec(repeats=7))
    assert result.state == "COMPLETE", result.error
    metrics, base = result.metrics, unpruned[granularity]
    assert metrics["channels_removed"] == 16 + 32 + 64
    assert base["channels_removed"] == 0
    for key in ("params", "size_bytes", "macs"):
        assert metrics[key] < 0.5 * base[key], key
    assert metrics["nonzero_params"] == metrics["params"]  # removed, not zeroed
    # Sparsity counts the removed weights: conv1 keeps 16 of 32 filters, conv2 and conv3 a
    # quarter of their weights (half the filters of half the inputs), fc half its inputs.
    original, kept = 288 + 18432 + 73728 + 1280, 144 + 4608 + 18432 + 640
    assert metrics["removed_fraction"] == pytest.approx(1 - kept / original)
    assert metrics["zero_fraction"] == 0.0
    assert metrics["sparsity"] == pytest.approx(metrics["removed_fraction"])
    # MACs above are the deterministic check. Latencies of separate trials are not comparable on
    # a loaded machine; the int8 and fp32 figures of one trial are timed interleaved, though.
    assert metrics["speedup"] > 1.0
    assert metrics["accuracy"] > 0.3


def test_digits_structured_int8_is_not_slower(digits: Task) -> None:
    """Both int8 models timed interleaved in one process: a sanity ratio with generous slack."""
    int8 = []
    for layers in ({}, {name: LayerSpec(0.5, "structured") for name in CONVS}):
        recipe = Recipe(layers=layers, finetune_epochs=0)
        trainable = apply_recipe(digits.build_model(), recipe, digits.example_input())
        int8.append(finalize(trainable, recipe, digits.calibration_batches()))
    dense, pruned = _measure.latencies(int8, digits.example_input(), repeats=21)
    assert pruned.median_ms < 1.25 * dense.median_ms, (pruned, dense)


def test_digits_output_layer_fails_the_trial_with_reason(digits: Task) -> None:
    result = run_trial(digits, Recipe(layers={"fc": LayerSpec(0.5, "structured")}))
    assert result.state == "FAIL"
    assert result.error is not None
    assert "layers.fc: cannot be pruned with method 'structured'" in result.error
    assert "model's output" in result.error


def test_structured_model_keeps_training(digits: Task) -> None:
    model = digits.build_model()
    recipe = Recipe(
        layers={"conv2.0": LayerSpec(0.5, "structured"), "conv3.0": LayerSpec(0.5)},
        finetune_epochs=1,
    )
    trainable = apply_recipe(model, recipe, digits.example_input())
    train(trainable, digits, epochs=1, learning_rate=1e-3, device=CPU, phase="test")
    conv3 = model.conv3[0].weight
    assert conv3.shape[1] == 32  # its input channels followed conv2's
    assert int((conv3 == 0).sum()) == round(0.5 * conv3.numel())  # zeros held through training
