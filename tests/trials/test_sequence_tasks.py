"""The built-in ``transformer`` and ``lstm`` tasks: procedural sequences, their models at a test
size, and every order running on them."""

from __future__ import annotations

import pytest
import torch

from trials import LatencySpec, LayerSpec, Recipe, Task, load_task, prunable_layers, run_trial
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


def test_attention_projections_say_why_they_keep_their_channels() -> None:
    task = load_task("transformer", SMALL["transformer"])
    reasons = structured(Encoder(32, 1), task.example_input())
    for name in ("blocks.0.attention.q", "blocks.0.attention.k", "blocks.0.attention.v"):
        assert reasons[name], name  # a reason, not None
    assert reasons["blocks.0.fc1"] is None and reasons["blocks.0.attention.out"] is None
