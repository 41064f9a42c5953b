import math
import warnings

import pytest
import torch
from torch import nn
from torch.ao.quantization.fake_quantize import FakeQuantizeBase

from trials import (
    LatencySpec,
    LayerSpec,
    Recipe,
    Task,
    _quant,
    apply_recipe,
    finalize,
    prunable_layers,
    run_trial,
)
from trials._train import train

CPU = torch.device("cpu")


def _quantized_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every int8 conv/linear weight of a converted model, by module name."""
    found = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if callable(weight):
            tensor = weight()
            if tensor.is_quantized:
                found[name] = tensor
    return found


@pytest.mark.parametrize("order", ["prune_ptq", "prune_qat"])
def test_sparsity_holds_through_finetune_and_conversion(digits: Task, order: str) -> None:
    model = digits.build_model()
    layers = prunable_layers(model)
    amounts = dict(zip(layers, [0.3, 0.6, 0.8, 0.45], strict=True))
    recipe = Recipe(layers={n: LayerSpec(a) for n, a in amounts.items()}, order=order)
    trainable = apply_recipe(model, recipe, digits.example_input())
    train(trainable, digits, epochs=1, learning_rate=1e-3, device=CPU, phase="test")
    modules = dict(model.named_modules())
    for name, amount in amounts.items():
        weight = modules[name].weight
        assert int((weight == 0).sum()) == round(amount * weight.numel()), name
    int8 = finalize(trainable, recipe, digits.calibration_batches())
    quantized = _quantized_weights(int8)
    assert len(quantized) == len(layers)
    for tensor, (name, amount) in zip(quantized.values(), amounts.items(), strict=True):
        zeros = int((tensor.int_repr() == 0).sum())
        # Conversion may round tiny weights to zero as well, never fewer than were pruned.
        assert zeros >= round(amount * tensor.numel()), name


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_int8_accuracy_within_two_points(
    digits: Task, digits_fp32_accuracy: float, granularity: str
) -> None:
    recipe = Recipe(granularity=granularity, finetune_epochs=0)
    int8 = finalize(
        apply_recipe(digits.build_model(), recipe, digits.example_input()),
        recipe,
        digits.calibration_batches(),
    )
    accuracy = digits.evaluate(int8, CPU)["accuracy"]
    assert accuracy >= digits_fp32_accuracy - 0.02


def test_per_channel_has_one_scale_per_output_channel(digits: Task) -> None:
    model = digits.build_model()
    out_channels = {
        n: m.weight.shape[0] for n, m in model.named_modules() if n in prunable_layers(model)
    }
    for granularity in ("per_channel", "per_tensor"):
        recipe = Recipe(granularity=granularity, finetune_epochs=0)
        int8 = finalize(
            apply_recipe(digits.build_model(), recipe, digits.example_input()),
            recipe,
            digits.calibration_batches(),
        )
        for name, tensor in _quantized_weights(int8).items():
            if granularity == "per_channel":
                # Symmetric observers; the int8 tensor stores them as affine with zero points 0.
                assert tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
                assert tensor.q_per_channel_scales().numel() == out_channels[name]
                assert int(tensor.q_per_channel_zero_points().abs().sum()) == 0
            else:
                assert tensor.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric)


def test_layer_kept_in_float(digits: Task) -> None:
    recipe = Recipe(layers={"fc": LayerSpec(0.0, granularity="none")}, finetune_epochs=0)
    int8 = finalize(
        apply_recipe(digits.build_model(), recipe, digits.example_input()),
        recipe,
        digits.calibration_batches(),
    )
    quantized = _quantized_weights(int8)
    assert "fc" not in quantized and len(quantized) == 3
    assert type(dict(int8.named_modules())["fc"]) is nn.Linear


def test_run_trial_measures_everything(digits: Task, digits_fp32_accuracy: float) -> None:
    layers = prunable_layers(digits.build_model())
    recipe = Recipe(layers={n: LayerSpec(0.5) for n in layers})
    result = run_trial(digits, recipe, latency=LatencySpec(repeats=5))
    assert result.state == "COMPLETE", result.error
    m = result.metrics
    for key in (
        "accuracy",
        "fp32_accuracy",
        "size_bytes",
        "compressed_bytes",
        "fp32_size_bytes",
        "latency_ms",
        "fp32_latency_ms",
        "sparsity",
        "params",
        "fp32_params",
        "macs",
    ):
        assert math.isfinite(m[key]) and m[key] >= 0, key
    assert m["fp32_accuracy"] == pytest.approx(digits_fp32_accuracy)
    assert m["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert m["size_bytes"] < m["fp32_size_bytes"] / 2  # int8 weights
    assert m["compressed_bytes"] < m["size_bytes"]
    assert {"finetune_s", "quantize_s", "measure_s"} <= set(result.timings)


def test_more_pruning_compresses_smaller(digits: Task) -> None:
    layers = prunable_layers(digits.build_model())
    sizes = []
    for amount in (0.0, 0.9):
        recipe = Recipe(layers={n: LayerSpec(amount) for n in layers}, finetune_epochs=0)
        result = run_trial(digits, recipe, latency=LatencySpec(repeats=3))
        sizes.append(result.metrics["compressed_bytes"])
    assert sizes[1] < 0.7 * sizes[0]


class _NanLossTask:
    """The digits task with a loss that turns NaN: the trial must FAIL with the reason."""

    def __init__(self, inner: Task) -> None:
        self._inner = inner
        self.name = "nan"

    def __getattr__(self, attr: str):  # delegate everything else
        return getattr(self._inner, attr)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._inner.loss(output, target) * float("nan")


def test_nan_loss_fails_the_trial_with_reason(digits: Task) -> None:
    result = run_trial(_NanLossTask(digits), Recipe(), latency=LatencySpec(repeats=3))  # type: ignore[arg-type]
    assert result.state == "FAIL"
    assert result.error is not None and "loss became nan" in result.error


def test_unknown_layer_fails_the_trial(digits: Task) -> None:
    result = run_trial(digits, Recipe(layers={"nope": LayerSpec(0.1)}))
    assert result.state == "FAIL"
    assert result.error is not None and "'nope' is not a prunable layer" in result.error


def test_no_deprecation_warnings_reach_users(digits: Task) -> None:
    layers = prunable_layers(digits.build_model())
    for order in ("prune_ptq", "prune_qat"):
        recipe = Recipe(layers={n: LayerSpec(0.3) for n in layers}, order=order)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run_trial(digits, recipe, latency=LatencySpec(repeats=3))
        assert result.state == "COMPLETE", result.error
        noisy = [
            str(w.message)[:80]
            for w in caught
            if issubclass(w.category, DeprecationWarning | UserWarning)
        ]
        assert noisy == [], noisy


def test_qat_freezes_observers_then_batchnorm(digits: Task) -> None:
    recipe = Recipe(order="prune_qat")
    prepared = apply_recipe(digits.build_model(), recipe, digits.example_input())
    fake_quants = [m for m in prepared.modules() if isinstance(m, FakeQuantizeBase)]
    bn_modules = [m for m in prepared.modules() if hasattr(m, "freeze_bn")]
    assert fake_quants and bn_modules
    total = 8
    for step in range(total):
        _quant.on_qat_step(prepared, step, total)
        observing = all(bool(m.observer_enabled[0]) for m in fake_quants)
        assert observing == (step < int(_quant.OBSERVER_FREEZE_AT * total)), step
        frozen = all(m.freeze_bn for m in bn_modules)
        assert frozen == (step >= int(_quant.BN_FREEZE_AT * total)), step
