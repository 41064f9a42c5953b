"""One trial end to end, built from the two public calls users make in their own training."""

from __future__ import annotations

import itertools
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trials import _measure, _quant
from trials._pruning import enforce_masks, prunable_layers, prune_model
from trials._recipe import Recipe, RecipeError
from trials._structured import prune_structured
from trials._task import AnalyticTask, Batch, Task
from trials._train import TrialError, train

ReportFn = Callable[[int, dict[str, float]], None]


class TrialPruned(Exception):
    """Raised by a ``report`` callback to stop a hopeless trial early (recorded as PRUNED)."""


@dataclass(frozen=True)
class TrialResult:
    state: str  # COMPLETE | PRUNED | FAIL
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    worker: str = ""
    intermediate: dict[int, float] = field(default_factory=dict)


def _example_inputs(example: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    return (example[:1].to(device),)


def apply_recipe(model: nn.Module, recipe: Recipe, example_input: torch.Tensor) -> nn.Module:
    """Prune ``model`` as the recipe says and, for ``prune_qat``, prepare it for QAT.

    Structured layers first: their output channels (and the channels they feed) are removed in
    place, so the layers get smaller; then unstructured L1 on the ``unstructured`` layers. Returns
    the model to train: the same module for ``prune_ptq``, an FX ``GraphModule`` with fake
    quantization for ``prune_qat``. Train it with any optimizer; pruned weights stay zero.
    Create the optimizer after this call: structured pruning replaces the pruned Parameters.
    """
    layers = prunable_layers(model)
    recipe.check_layers(layers)
    prune_structured(model, recipe, example_input)
    prune_model(model, recipe)
    if recipe.order == "prune_qat":
        device = next(model.parameters()).device
        return _quant.prepare_qat(model, recipe, layers, _example_inputs(example_input, device))
    return model


def finalize(
    model: nn.Module, recipe: Recipe, calibration_data: Iterable[Batch] | None = None
) -> nn.Module:
    """The int8 model, on the CPU.

    ``prune_ptq``: observes the first ``recipe.calibration_batches`` batches of
    ``calibration_data`` and converts. ``prune_qat``: converts the model that :func:`apply_recipe`
    returned and that was trained since (``calibration_data`` is not needed).
    """
    enforce_masks(model)
    if recipe.order == "prune_qat":
        if not isinstance(model, torch.fx.GraphModule):
            raise RecipeError("order: prune_qat needs the model returned by apply_recipe")
        return _quant.convert(model)
    batches = list(itertools.islice(calibration_data or [], recipe.calibration_batches))
    if not batches:
        raise RecipeError("calibration_data: prune_ptq needs at least one calibration batch")
    model = model.cpu().eval()
    cpu = torch.device("cpu")
    prepared = _quant.prepare_ptq(
        model, recipe, prunable_layers(model), _example_inputs(batches[0][0], cpu)
    )
    with torch.no_grad():
        for inputs, _ in batches:
            prepared(inputs.cpu())
    return _quant.convert(prepared)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def phase(self, name: str) -> _Phase:
        return _Phase(self, name)


class _Phase:
    def __init__(self, timer: _Timer, name: str) -> None:
        self.timer, self.name, self.start = timer, name, 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.timings[self.name] = time.perf_counter() - self.start


def run_trial(
    task: Task,
    recipe: Recipe,
    *,
    device: str | torch.device = "cpu",
    report: ReportFn | None = None,
    latency_threads: int = 1,
    latency_repeats: int = 15,
) -> TrialResult:
    """Prune, fine-tune, quantize and measure one recipe. Never raises for a bad trial: it returns
    a FAIL (or PRUNED) result whose ``error`` says why."""
    timer = _Timer()
    intermediate: dict[int, float] = {}
    try:
        if isinstance(task, AnalyticTask):
            metrics = _simulate(task, recipe, timer)
        else:
            with _quant.quiet():
                metrics, _ = _run(
                    task,
                    recipe,
                    torch.device(device),
                    report,
                    timer,
                    intermediate,
                    latency_threads,
                    latency_repeats,
                )
    except TrialPruned as exc:
        return TrialResult(
            "PRUNED", {}, timer.timings, str(exc) or "pruned", worker_name(), intermediate
        )
    except (TrialError, RecipeError) as exc:
        return TrialResult("FAIL", {}, timer.timings, str(exc), worker_name(), intermediate)
    except Exception as exc:  # noqa: BLE001 - any failure of user or library code is a FAIL
        where = traceback.extract_tb(exc.__traceback__)[-1]
        reason = (
            f"{type(exc).__name__}: {exc} (at {os.path.basename(where.filename)}:{where.lineno})"
        )
        return TrialResult("FAIL", {}, timer.timings, reason, worker_name(), intermediate)
    return TrialResult("COMPLETE", metrics, timer.timings, None, worker_name(), intermediate)


def _simulate(task: AnalyticTask, recipe: Recipe, timer: _Timer) -> dict[str, float]:
    with timer.phase("build_s"):
        recipe.check_layers(prunable_layers(task.build_model()))
    with timer.phase("simulate_s"):
        time.sleep(task.trial_seconds)
    return {k: float(v) for k, v in task.analytic_metrics(recipe).items()}


def _run(
    task: Task,
    recipe: Recipe,
    device: torch.device,
    report: ReportFn | None,
    timer: _Timer,
    intermediate: dict[int, float],
    latency_threads: int,
    latency_repeats: int,
) -> tuple[dict[str, float], nn.Module]:
    with timer.phase("build_s"):
        baseline = task.build_model().cpu().eval()
        layers = prunable_layers(baseline)
        recipe.check_layers(layers)
        example = task.example_input()
        model = task.build_model().to(device)

    def on_epoch(epoch: int, trained: nn.Module) -> None:
        if report is None:
            return
        value = task.evaluate(trained, device)
        intermediate[len(intermediate)] = value["accuracy"]
        report(len(intermediate) - 1, value)

    with timer.phase("prune_s"):
        trainable = apply_recipe(model, recipe, example) if recipe.order == "prune_ptq" else model
    with timer.phase("finetune_s"):
        train(
            trainable,
            task,
            epochs=recipe.finetune_epochs,
            learning_rate=recipe.learning_rate,
            device=device,
            phase="fine-tune",
            on_epoch=on_epoch,
        )
    if recipe.order == "prune_qat":
        with timer.phase("qat_s"):
            trainable = apply_recipe(model, recipe, example)
            train(
                trainable,
                task,
                epochs=recipe.qat_epochs,
                learning_rate=recipe.learning_rate / 10,
                device=device,
                phase="QAT",
                on_step=lambda s, n: _quant.on_qat_step(trainable, s, n),
                on_epoch=on_epoch,
            )
    float_model = model  # pruned and fine-tuned, before quantization
    with timer.phase("quantize_s"):
        int8 = finalize(trainable, recipe, task.calibration_batches())
    cpu = torch.device("cpu")
    with timer.phase("evaluate_s"):
        int8_metrics = task.evaluate(int8, cpu)
        fp32_metrics = task.evaluate(baseline, cpu)
    with timer.phase("measure_s"):
        metrics = _measurements(
            baseline, float_model.cpu(), int8, layers, example, latency_threads, latency_repeats
        )
    metrics["channels_removed"] = float(_channels_removed(baseline, float_model, layers))
    metrics.update({k: float(v) for k, v in int8_metrics.items()})
    metrics.update({f"fp32_{k}": float(v) for k, v in fp32_metrics.items()})
    metrics["accuracy_drop"] = metrics["fp32_accuracy"] - metrics["accuracy"]
    return metrics, int8


@dataclass(frozen=True)
class Compressed:
    """What :func:`compress` made: the int8 model (CPU), its metrics and phase timings."""

    model: nn.Module
    metrics: dict[str, float]
    timings: dict[str, float]


def compress(
    task: Task,
    recipe: Recipe,
    *,
    device: str | torch.device = "cpu",
    latency_threads: int = 1,
    latency_repeats: int = 15,
) -> Compressed:
    """:func:`run_trial`'s flow, keeping the int8 model; errors raise instead of becoming a FAIL
    (a :class:`RecipeError` for a recipe that does not fit the task's model)."""
    if isinstance(task, AnalyticTask):
        raise RecipeError("task: an analytic task has no model to compress; use a real task")
    timer = _Timer()
    with _quant.quiet():
        metrics, int8 = _run(
            task, recipe, torch.device(device), None, timer, {}, latency_threads, latency_repeats
        )
    return Compressed(int8, metrics, timer.timings)


def _channels_removed(baseline: nn.Module, pruned: nn.Module, layers: list[str]) -> int:
    """Output channels that structured pruning removed, summed over the Conv/Linear layers."""
    before, after = dict(baseline.named_modules()), dict(pruned.named_modules())
    return sum(
        int(before[name].weight.shape[0]) - int(after[name].weight.shape[0]) for name in layers
    )


def _measurements(
    baseline: nn.Module,
    pruned: nn.Module,
    int8: nn.Module,
    layers: list[str],
    example: torch.Tensor,
    latency_threads: int,
    latency_repeats: int,
) -> dict[str, float]:
    fp32_reference, reference_kind = _quant.fold_batchnorm(baseline)
    fp32_latency, int8_latency = _measure.latencies(
        [fp32_reference, int8], example, num_threads=latency_threads, repeats=latency_repeats
    )
    size, compressed = _measure.serialized_sizes(int8)
    fp32_size, fp32_compressed = _measure.serialized_sizes(baseline)
    params, nonzero = _measure.count_params(pruned)
    fp32_params, _ = _measure.count_params(baseline)
    metrics: dict[str, Any] = {
        "size_bytes": size,
        "compressed_bytes": compressed,
        "fp32_size_bytes": fp32_size,
        "fp32_compressed_bytes": fp32_compressed,
        "latency_ms": int8_latency.median_ms,
        "latency_min_ms": int8_latency.min_ms,
        "latency_max_ms": int8_latency.max_ms,
        "fp32_latency_ms": fp32_latency.median_ms,
        "fp32_latency_min_ms": fp32_latency.min_ms,
        "fp32_latency_max_ms": fp32_latency.max_ms,
        "fp32_bn_folded": 1.0 if reference_kind == "bn_folded" else 0.0,
        "speedup": fp32_latency.median_ms / int8_latency.median_ms,
        "latency_threads": latency_threads,
        "latency_batch": example.shape[0],
        "sparsity": _measure.weight_sparsity(pruned, layers),
        "params": params,
        "nonzero_params": nonzero,
        "fp32_params": fp32_params,
        "macs": _measure.count_macs(pruned, example),
    }
    return {k: float(v) for k, v in metrics.items()}
