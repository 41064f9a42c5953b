import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import trials
from tests.trials.onnx_graph import float_layers, int8_weights, op_types
from trials import (
    LatencySpec,
    LayerSpec,
    Recipe,
    RecipeError,
    Task,
    TrialError,
    _fakequant,
    _runtime,
    apply_recipe,
    finalize,
    prunable_layers,
    run_trial,
)
from trials._train import train

CPU = torch.device("cpu")
ORDERS = ("prune_ptq", "prune_qat", "prune_dynamic", "prune_float")


@pytest.mark.parametrize("order", ORDERS)
def test_pruned_zeros_are_exact_zeros_of_the_int8_model(digits: Task, order: str) -> None:
    model = digits.build_model()
    layers = prunable_layers(model)
    amounts = dict(zip(layers, [0.3, 0.6, 0.8, 0.45], strict=True))
    recipe = Recipe(layers={n: LayerSpec(a) for n, a in amounts.items()}, order=order)
    trainable = apply_recipe(model, recipe, digits.example_input())
    train(trainable, digits, epochs=1, learning_rate=1e-3, device=CPU, phase="test")
    trained = dict(trainable.named_modules())
    for name, amount in amounts.items():
        weight = trained[name].weight
        assert int((weight == 0).sum()) == round(amount * weight.numel()), name
    int8 = finalize(trainable, recipe, digits.calibration_batches())
    quantized = int8_weights(int8)
    # Dynamic quantization makes Linear layers int8 and leaves convolutions in float; a float
    # recipe quantizes nothing.
    expected = {"prune_dynamic": ["fc"], "prune_float": []}.get(order, layers)
    assert sorted(quantized) == sorted(expected)
    assert float_layers(int8) == set(layers) - set(expected)
    for name in expected:
        tensor = quantized[name].values
        assert np.all(quantized[name].zero_point == 0), name  # symmetric: 0.0 is exactly 0
        # Rounding may zero tiny weights as well, never fewer than were pruned.
        assert int((tensor == 0).sum()) >= round(amounts[name] * tensor.size), name


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
    assert "QuantizeLinear" in op_types(int8)
    accuracy = digits.evaluate(int8, CPU)["accuracy"]
    assert accuracy >= digits_fp32_accuracy - 0.02


def test_per_channel_has_one_scale_per_output_channel(digits: Task) -> None:
    model = digits.build_model()
    out_channels = {n: model.get_parameter(f"{n}.weight").shape[0] for n in prunable_layers(model)}
    for granularity in ("per_channel", "per_tensor"):
        recipe = Recipe(granularity=granularity, finetune_epochs=0)
        int8 = finalize(
            apply_recipe(digits.build_model(), recipe, digits.example_input()),
            recipe,
            digits.calibration_batches(),
        )
        weights = int8_weights(int8)
        assert sorted(weights) == sorted(out_channels)
        for name, weight in weights.items():
            expected = out_channels[name] if granularity == "per_channel" else 1
            assert weight.scale.size == expected, (granularity, name)


def test_granularity_per_layer_and_a_layer_kept_in_float(digits: Task) -> None:
    recipe = Recipe(
        layers={
            "fc": LayerSpec(0.0, granularity="none"),
            "conv2.0": LayerSpec(0.0, granularity="per_channel"),
        },
        finetune_epochs=0,
    )
    int8 = finalize(
        apply_recipe(digits.build_model(), recipe, digits.example_input()),
        recipe,
        digits.calibration_batches(),
    )
    weights = int8_weights(int8)
    assert sorted(weights) == ["conv1.0", "conv2.0", "conv3.0"]
    assert weights["conv2.0"].scale.size == 64 and weights["conv3.0"].scale.size == 1
    assert float_layers(int8) == {"fc"}


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_qat_simulates_the_deployed_weights_exactly(digits: Task, granularity: str) -> None:
    """What QAT trains against is what the runtime stores: the fake-quantized weight of every
    layer equals the int8 model's dequantized weight (up to a rare one-step difference where a
    weight sits on a rounding tie: the runtime computes scales in float64)."""
    recipe = Recipe(order="prune_qat", granularity=granularity)
    prepared = apply_recipe(digits.build_model(), recipe, digits.example_input())
    train(prepared, digits, epochs=1, learning_rate=1e-4, device=CPU, phase="test")
    int8 = finalize(prepared, recipe, digits.calibration_batches())
    deployed = int8_weights(int8)
    modules = dict(prepared.named_modules())
    for name in prunable_layers(digits.build_model()):
        simulated = modules[name].weight.detach().numpy()
        stored = deployed[name].dequantized()
        if simulated.shape != stored.shape:  # Gemm stores (out, in) as the Linear does
            stored = stored.T
        step = float(deployed[name].scale.max())
        differs = np.abs(stored - simulated) > 1e-6
        assert differs.mean() < 1e-3, (name, int(differs.sum()))
        assert np.abs(stored - simulated).max() <= step * 1.001, name


def test_qat_int8_model_scores_as_the_fake_quantized_model(digits: Task) -> None:
    recipe = Recipe(order="prune_qat")
    prepared = apply_recipe(digits.build_model(), recipe, digits.example_input())
    train(
        prepared,
        digits,
        epochs=1,
        learning_rate=1e-4,
        device=CPU,
        phase="test",
        on_step=lambda s, n: _runtime.on_qat_step(prepared, s, n),
    )
    simulated = digits.evaluate(prepared, CPU)["accuracy"]
    int8 = finalize(prepared, recipe, digits.calibration_batches())
    assert digits.evaluate(int8, CPU)["accuracy"] == pytest.approx(simulated, abs=0.01)


class _InputNorm(nn.Module):
    """A BatchNorm on the input (nothing to fold it into) and a conv + BatchNorm (folded)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(1)
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.norm(x))).mean((2, 3))


def test_qat_folds_batchnorm_then_freezes_observers_and_unfolded_batchnorm() -> None:
    recipe = Recipe(order="prune_qat")
    prepared = apply_recipe(_InputNorm(), recipe, torch.randn(2, 1, 8, 8))
    norms = [m for m in prepared.modules() if isinstance(m, nn.BatchNorm2d)]
    observers = [m for m in prepared.modules() if isinstance(m, _fakequant.ActivationObserver)]
    assert len(norms) == 1 and len(observers) == 1  # conv + bn folded, the input norm kept
    total = 8
    for step in range(total):
        _runtime.on_qat_step(prepared, step, total)
        prepared(torch.randn(2, 1, 8, 8))
        assert observers[0].observing == (step < int(_runtime.OBSERVER_FREEZE_AT * total))
        assert norms[0].training == (step < int(_runtime.BN_FREEZE_AT * total))


def test_dynamic_order_needs_linear_layers() -> None:
    conv_only = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    with pytest.raises(RecipeError, match="prune_dynamic quantizes Linear and LSTM layers"):
        apply_recipe(conv_only, Recipe(order="prune_dynamic"), torch.randn(2, 1, 8, 8))


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
    assert (m["zero_fraction"], m["removed_fraction"]) == (m["sparsity"], 0.0)
    assert m["size_bytes"] < m["fp32_size_bytes"] / 2  # int8 weights
    assert m["compressed_bytes"] < m["size_bytes"]
    assert {"finetune_s", "quantize_s", "measure_s"} <= set(result.timings)
    assert result.environment["runtime"].startswith("onnxruntime ")


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
    for order in ORDERS:
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


# Every DeprecationWarning an error, before anything is imported: importing the project and
# running a default trial of each order must not touch a deprecated API of torch or of any
# dependency (nothing is silenced on the way).
_STRICT_TRIAL = """
import warnings
warnings.simplefilter("error", DeprecationWarning)
import sweep.cli, storage, trials
from trials import LatencySpec, Recipe, load_task, run_trial
task = load_task("digits")
for order in ("prune_ptq", "prune_qat", "prune_dynamic", "prune_float"):
    result = run_trial(task, Recipe(order=order), latency=LatencySpec(repeats=3))
    print(order, result.state, result.error)
"""


def test_a_default_trial_runs_with_deprecation_warnings_as_errors() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", _STRICT_TRIAL],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [
        word for order in ORDERS for word in (order, "COMPLETE", "None")
    ], done.stdout


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.mark.parametrize("order", ["prune_ptq", "prune_qat", "prune_dynamic"])
def test_linear_layers_kept_in_float_per_layer(order: str) -> None:
    example = torch.randn(8, 16)
    recipe = Recipe(
        layers={"body.2": LayerSpec(0.5, granularity="none")}, order=order, finetune_epochs=0
    )
    model = apply_recipe(_Mlp().eval(), recipe, example)
    int8 = finalize(model, recipe, [(example, torch.zeros(8))], example_input=example)
    assert sorted(int8_weights(int8)) == ["body.0", "head"]
    assert "body.2" in float_layers(int8)
    assert int8(example).shape == (8, 4)


def test_dynamic_order_takes_one_granularity_for_its_linear_layers() -> None:
    recipe = Recipe(
        layers={"head": LayerSpec(0.0, granularity="per_channel")},
        order="prune_dynamic",
        granularity="per_tensor",
    )
    model = apply_recipe(_Mlp().eval(), recipe, torch.randn(8, 16))
    with pytest.raises(RecipeError, match=r"^layers\.body\.0\.granularity: prune_dynamic"):
        finalize(model, recipe, example_input=torch.randn(8, 16))


class _Branchy(nn.Module):
    """Python control flow on tensor values: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)


def test_a_model_that_cannot_be_exported_fails_with_the_reason() -> None:
    recipe = Recipe(finetune_epochs=0)
    example = torch.randn(8, 4)
    model = apply_recipe(_Branchy(), recipe, example)
    with pytest.raises(TrialError, match=r"^the model could not be exported to ONNX \("):
        finalize(model, recipe, [(example, torch.zeros(8))])


class _Gelu(_Mlp):
    """The same parameters as _Mlp under another forward: an export cache keyed on shapes alone
    would hand it _Mlp's graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.gelu(self.body[2](nn.functional.gelu(self.body[0](x)))))


def test_models_with_equal_shapes_but_other_code_get_their_own_graph() -> None:
    example = torch.randn(8, 16)
    for model in (_Mlp().eval(), _Gelu().eval(), _Mlp().eval()):
        reference = trials.reference_model(model, example)
        with torch.no_grad():
            torch.testing.assert_close(reference(example), model(example), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("backend", "qmax"), [("x86", 64), ("onednn", 127), ("qnnpack", 127)])
def test_the_x86_backend_keeps_weights_to_7_bits(digits: Task, backend: str, qmax: int) -> None:
    recipe = Recipe(backend=backend, finetune_epochs=0)
    int8 = finalize(
        apply_recipe(digits.build_model(), recipe, digits.example_input()),
        recipe,
        digits.calibration_batches(),
    )
    largest = max(int(np.abs(w.values.astype(np.int32)).max()) for w in int8_weights(int8).values())
    assert largest == qmax


class _FixedBatch(nn.Module):
    """A forward written for one batch size: torch.export cannot make its batch dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(8, 12))


def test_a_model_exported_for_one_batch_size_runs_any_batch() -> None:
    torch.manual_seed(0)
    model = _FixedBatch().eval()
    inputs = torch.randn(20, 3, 4)
    recipe = Recipe(finetune_epochs=0)
    # Two slices of 8 rows, then 4 padded to 8: every input's range is observed.
    calibration = [(inputs, torch.zeros(20))]
    prepared = apply_recipe(model, recipe, inputs[:8])
    int8 = finalize(prepared, recipe, calibration, example_input=inputs[:8])
    with torch.no_grad():
        sliced = [int8(inputs[0:8]), int8(inputs[8:16]), int8(inputs[12:20])[4:]]
        expected = torch.cat([model(inputs[i : i + 8]) for i in (0, 8)] + [model(inputs[12:])[4:]])
    assert int8(inputs).shape == (20, 3)
    assert torch.equal(int8(inputs), torch.cat(sliced))
    torch.testing.assert_close(int8(inputs), expected, atol=0.1, rtol=0)


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embed(tokens))
        return self.head(hidden[:, -1])


def test_dynamic_order_makes_lstm_and_linear_layers_int8() -> None:
    torch.manual_seed(0)
    model = _Recurrent().eval()
    tokens = torch.randint(0, 20, (6, 9))
    recipe = Recipe(order="prune_dynamic", finetune_epochs=0)
    int8 = finalize(apply_recipe(model, recipe, tokens), recipe, example_input=tokens)
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= op_types(int8)
    with torch.no_grad():
        torch.testing.assert_close(int8(tokens), model(tokens), atol=0.05, rtol=0)


def test_a_float_recipe_is_the_pruned_fp32_model_in_the_runtime(digits: Task) -> None:
    """prune_float: no quantization; structured pruning still makes it smaller and faster."""
    convs = ("conv1.0", "conv2.0", "conv3.0")
    recipe = Recipe(
        layers={name: LayerSpec(0.5, "structured") for name in convs},
        order="prune_float",
        finetune_epochs=1,
    )
    result = run_trial(digits, recipe, latency=LatencySpec(repeats=7))
    assert result.state == "COMPLETE", result.error
    metrics = result.metrics
    assert metrics["params"] < 0.4 * metrics["fp32_params"]
    assert metrics["size_bytes"] < 0.4 * metrics["fp32_size_bytes"]  # float32 weights, fewer
    assert metrics["size_bytes"] > 3 * metrics["params"]
    assert metrics["speedup"] > 1.0


class _CountingTask:
    """The digits task, counting the models it evaluates."""

    def __init__(self, inner: Task) -> None:
        self._inner = inner
        self.name = inner.name
        self.evaluated = 0

    def __getattr__(self, attr: str):  # delegate everything else
        return getattr(self._inner, attr)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        self.evaluated += 1
        return self._inner.evaluate(model, device)


def test_a_trial_given_the_reference_measures_only_its_own_model(digits: Task) -> None:
    """The fp32 baseline is measured once per sweep (and its latency once per hardware class):
    a trial that is given it neither evaluates, exports nor times the baseline again."""
    spec = LatencySpec(repeats=3)
    recipe = Recipe(finetune_epochs=0)
    task = _CountingTask(digits)
    first = run_trial(task, recipe, latency=spec)  # type: ignore[arg-type]
    assert first.state == "COMPLETE" and task.evaluated == 2  # the int8 model and the baseline
    assert first.reference_latency is not None  # it timed the fp32 model
    measured_on = trials.hardware_class(first.environment)
    sizes = (int(first.metrics["fp32_size_bytes"]), int(first.metrics["fp32_compressed_bytes"]))
    known = trials.LatencyStats(9.0, 8.0, 10.0)
    reference = trials.Reference(
        metrics={"accuracy": 0.5}, sizes=sizes, latencies={measured_on: known}
    )
    task.evaluated = 0
    again = run_trial(task, recipe, latency=spec, reference=reference)  # type: ignore[arg-type]
    assert again.state == "COMPLETE" and task.evaluated == 1  # its own model only
    assert again.reference_latency is None
    metrics = again.metrics
    assert metrics["fp32_accuracy"] == 0.5
    assert metrics["accuracy_drop"] == pytest.approx(0.5 - metrics["accuracy"])
    assert (metrics["fp32_size_bytes"], metrics["fp32_compressed_bytes"]) == sizes
    assert metrics["fp32_latency_ms"] == 9.0
    assert metrics["speedup"] == pytest.approx(9.0 / metrics["latency_ms"])
    other = trials.Reference(latencies={"another machine": known})  # not this class: timed here
    assert run_trial(digits, recipe, latency=spec, reference=other).reference_latency is not None
