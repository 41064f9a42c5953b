"""The built-in ``transformer`` and ``lstm`` tasks: procedural sequences, their models at a test
size, and every order running on them."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from trials import (
    LatencySpec,
    LayerSpec,
    Recipe,
    Removable,
    Task,
    apply_recipe,
    load_task,
    prunable_layers,
    run_trial,
    structured_groups,
    structured_layout,
)
from trials import structured_prunable as structured
from trials.tasks.sequences import CLASSES, LABEL_NOISE, Encoder, generate

CPU = torch.device("cpu")
SMALL = {"transformer": {"width": 32, "depth": 1}, "lstm": {"width": 32}}


def test_sequences_are_deterministic_and_labelled_by_a_motif() -> None:
    tokens, labels = generate(2000, seed=5)
    again, same = generate(2000, seed=5)
    assert torch.equal(tokens, again) and torch.equal(labels, same)
    assert not torch.equal(tokens, generate(2000, seed=6)[0])
    assert set(labels.tolist()) == set(range(CLASSES))
    first, _ = generate(2000, seed=5, label=0)
    assert torch.equal(first, tokens)  # the label rule changes labels only
    _, last = generate(2000, seed=5, label=-1)
    assert 0.5 < float((last != labels).float().mean()) < 0.95  # another motif, mostly


def test_the_default_transformer_has_two_dozen_linear_layers() -> None:
    layers = prunable_layers(Encoder())
    assert len(layers) >= 24
    assert {"blocks.0.attention.q", "blocks.0.attention.out", "blocks.0.fc1"} <= set(layers)


@pytest.fixture(scope="module", params=["transformer", "lstm"])
def small(request: pytest.FixtureRequest) -> Task:
    return load_task(request.param, SMALL[request.param])


@pytest.mark.slow
def test_a_small_sequence_model_learns_its_task(small: Task) -> None:
    accuracy = small.evaluate(small.build_model(), CPU)["accuracy"]
    assert 0.75 < accuracy <= 1.0 - LABEL_NOISE * (CLASSES - 1) / CLASSES + 0.02, accuracy


@pytest.mark.slow
def test_every_order_runs_on_a_sequence_model(small: Task) -> None:
    model = small.build_model()
    layers = prunable_layers(model)
    reasons = structured(model, small.example_input())
    # The MLP and output projections lose channels; the head is the model's output.
    assert reasons[layers[-1]] is not None
    for order in ("prune_ptq", "prune_qat", "prune_dynamic", "prune_float"):
        recipe = Recipe(
            layers={name: LayerSpec(0.5) for name in layers}, order=order, finetune_epochs=1
        )
        result = run_trial(small, recipe, latency=LatencySpec(repeats=3))
        assert result.state == "COMPLETE", (order, result.error)
        assert result.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)
        assert result.metrics["accuracy"] > 0.5, order


def test_attention_projections_lose_whole_heads() -> None:
    task = load_task("transformer", SMALL["transformer"])
    torch.manual_seed(0)
    model, example = Encoder(32, 2, heads=4).eval(), task.example_input()
    reasons = structured(model, example)
    attention = ("q", "k", "v")
    assert all(reasons[f"blocks.{i}.attention.{p}"] is None for i in (0, 1) for p in attention)
    assert ("blocks.0.attention.q", "blocks.0.attention.k", "blocks.0.attention.v") in (
        structured_groups(model, example)
    )
    # What the sampler models a structured amount by: the share of heads that go, not of
    # channels (0.3 of 4 heads is 1 head, a quarter of the channels).
    removable = structured_layout(model, example).removable
    assert removable["blocks.0.attention.q"] == Removable(4, heads=True)
    assert removable["blocks.0.attention.q"].removed_share(0.3, round_to=4) == 0.25
    assert removable["blocks.0.attention.q"].removed_share(0.5, round_to=4) == 0.5
    # The pruned model computes what the original does with the dropped heads' values zeroed:
    # the kept heads are untouched (same head width, same softmax scale).
    reference = copy.deepcopy(model)
    recipe = Recipe(
        layers={
            "blocks.0.attention.k": LayerSpec(0.5, method="structured"),
            "blocks.1.attention.v": LayerSpec(0.25, method="structured"),
        },
        order="prune_float",
    )
    model = apply_recipe(model, recipe, example)
    for projection in attention:  # 2 of 4 heads of 8 channels removed, then 1 of 4
        widths = [getattr(block.attention, projection).out_features for block in model.blocks]
        assert widths == [16, 24], projection
    assert [block.attention.heads for block in model.blocks] == [2, 3]
    assert model.blocks[0].attention.out.in_features == 16
    for block, pruned in zip(reference.blocks, model.blocks, strict=True):
        kept = {tuple(row.tolist()) for row in pruned.attention.v.weight.detach()}
        with torch.no_grad():
            for row in range(block.attention.v.out_features):
                if tuple(block.attention.v.weight[row].tolist()) not in kept:
                    block.attention.v.weight[row] = 0.0
                    block.attention.v.bias[row] = 0.0
    with torch.no_grad():
        torch.testing.assert_close(model(example), reference(example))


class FusedAttention(nn.Module):
    """One ``qkv`` projection, as timm's ViT has it."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(qkv[0] @ qkv[1].transpose(-2, -1), dim=-1)
        return self.proj((weights @ qkv[2]).transpose(1, 2).reshape(batch, length, width))


def test_a_fused_qkv_projection_says_why_it_keeps_its_heads() -> None:
    model = nn.Sequential(FusedAttention(16, 4), nn.Linear(16, 3))
    reasons = structured(model, torch.randn(2, 5, 16))
    assert "fused projection" in str(reasons["0.qkv"]), reasons


@pytest.mark.slow
def test_a_transformer_with_heads_and_hidden_units_removed_runs_every_int8_order() -> None:
    task = load_task("transformer", SMALL["transformer"])
    layers = prunable_layers(task.build_model())
    spec = LayerSpec(0.5, method="structured")
    recipe = Recipe(layers={name: spec for name in layers[:-1]}, finetune_epochs=1)
    for order in ("prune_ptq", "prune_dynamic"):
        result = run_trial(
            task, dataclasses.replace(recipe, order=order), latency=LatencySpec(repeats=3)
        )
        assert result.state == "COMPLETE", (order, result.error)
        assert result.metrics["channels_removed"] > 0
        assert result.metrics["accuracy"] > 0.5, order
