"""One trial end to end, built from the two public calls users make in their own training."""

from __future__ import annotations

import itertools
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trials import _measure, _runtime
from trials._measure import LatencySpec
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
    """The outcome of :func:`run_trial`: its state, metrics (empty unless COMPLETE), seconds per
    phase, the reason of a FAIL or PRUNED, the worker, and the metrics reported per epoch."""

    state: str  # COMPLETE | PRUNED | FAIL
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    worker: str = ""
    intermediate: dict[int, float] = field(default_factory=dict)
    # Where latency was measured (trials.environment), when it was.
    environment: dict[str, str] = field(default_factory=dict)
    # The int8 model, when run_trial was asked to keep it (to measure it elsewhere).
    model: nn.Module | None = None


def apply_recipe(model: nn.Module, recipe: Recipe, example_input: torch.Tensor) -> nn.Module:
    """Prune ``model`` as the recipe says and, for ``prune_qat``, prepare it for QAT.

    Structured layers first: their output channels (and the channels they feed) are removed in
    place, so the layers get smaller; then unstructured L1 on the ``unstructured`` layers. Returns
    the model to train: the same module for ``prune_ptq``, ``prune_dynamic`` and
    ``prune_float``; for
    ``prune_qat``, the model with BatchNorm folded (where it can be traced) and int8 rounding
    simulated on its weights and inputs, under the same layer names. Train it with any
    optimizer; pruned weights stay zero. Create the optimizer after this call: structured
    pruning and BatchNorm folding replace Parameters.
    """
    layers = _prune(model, recipe, example_input)
    if recipe.order == "prune_qat":
        return _runtime.prepare_qat(model, recipe, layers)
    return model


def _prune(model: nn.Module, recipe: Recipe, example_input: torch.Tensor) -> list[str]:
    """Structured, then unstructured pruning, in place; returns the prunable layers."""
    layers = prunable_layers(model)
    recipe.check_layers(layers)
    if recipe.order == "prune_dynamic" and not _runtime.has_dynamic_layers(model):
        raise RecipeError(
            "order: prune_dynamic quantizes Linear and LSTM layers, and this model has "
            "none; use prune_ptq or prune_qat"
        )
    prune_structured(model, recipe, example_input)
    prune_model(model, recipe)
    return layers


def finalize(
    model: nn.Module,
    recipe: Recipe,
    calibration_data: Iterable[Batch] | None = None,
    *,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """The int8 model (for ``prune_float``, the pruned fp32 model), run by the recipe's runtime on
    the CPU (call it like a module; save it with :func:`save_int8`).

    ``prune_ptq`` observes the first ``recipe.calibration_batches`` batches of
    ``calibration_data``; ``prune_qat`` converts the model that :func:`apply_recipe` returned and
    that was trained since, with the input ranges it trained with, and calibrates the tensors
    outside its layers on the same batches; ``prune_dynamic`` and ``prune_float`` need no
    calibration. The model is
    exported on ``example_input`` (default: the first calibration batch).
    """
    enforce_masks(model)
    batches = [
        inputs.cpu()
        for inputs, _ in itertools.islice(calibration_data or [], recipe.calibration_batches)
    ]
    example = example_input if example_input is not None else (batches[0] if batches else None)
    if example is None:
        raise RecipeError(
            "calibration_data: give calibration batches (or, for prune_dynamic and prune_float, "
            "example_input)"
        )
    layers = prunable_layers(model)
    return _runtime.convert(model, recipe, layers, example.cpu(), batches or None)


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
    latency: LatencySpec | None = LatencySpec(),
    keep_model: bool = False,
) -> TrialResult:
    """Prune, fine-tune, quantize and measure one recipe. Never raises for a bad trial: it returns
    a FAIL (or PRUNED) result whose ``error`` says why.

    ``latency`` None skips the latency measurement (the caller measures the model elsewhere, on
    its target hardware: pass ``keep_model=True`` to get the int8 model in ``result.model``).
    """
    timer = _Timer()
    intermediate: dict[int, float] = {}
    kept: list[nn.Module] = []
    environment: dict[str, str] = {}
    try:
        if isinstance(task, AnalyticTask):
            metrics = _simulate(task, recipe, timer)
        else:
            metrics = _run(
                task, recipe, torch.device(device), report, timer, intermediate, latency, kept
            )
            if latency is not None:
                environment = _measure.environment(
                    recipe.backend, latency.threads, _runtime.runtime_version(recipe.runtime)
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
    model = kept[0] if keep_model and kept else None
    return TrialResult(
        "COMPLETE", metrics, timer.timings, None, worker_name(), intermediate, environment, model
    )


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
    latency: LatencySpec | None,
    kept: list[nn.Module],
) -> dict[str, float]:
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

    # Every order prunes first and fine-tunes the pruned float model; prune_qat then trains on
    # with int8 rounding simulated (QAT) before converting.
    with timer.phase("prune_s"):
        _prune(model, recipe, example)
    trainable: nn.Module = model
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
            trainable = _runtime.prepare_qat(model, recipe, layers)
            train(
                trainable,
                task,
                epochs=recipe.qat_epochs,
                learning_rate=recipe.learning_rate / 10,
                device=device,
                phase="QAT",
                on_step=lambda s, n: _runtime.on_qat_step(trainable, s, n),
                on_epoch=on_epoch,
            )
    float_model = model  # pruned and fine-tuned, before quantization
    with timer.phase("quantize_s"):
        int8 = finalize(trainable, recipe, task.calibration_batches(), example_input=example)
    kept.append(int8)
    cpu = torch.device("cpu")
    with timer.phase("evaluate_s"):
        int8_metrics = task.evaluate(int8, cpu)
        fp32_metrics = task.evaluate(baseline, cpu)
    with timer.phase("measure_s"):
        reference = reference_model(baseline, example, recipe.runtime)
        metrics = _measurements(baseline, float_model.cpu(), int8, reference, layers, example)
        if latency is not None:
            metrics.update(_latencies(reference, int8, example, latency))
    metrics["channels_removed"] = float(_channels_removed(baseline, float_model, layers))
    metrics.update({k: float(v) for k, v in int8_metrics.items()})
    metrics.update({f"fp32_{k}": float(v) for k, v in fp32_metrics.items()})
    metrics["accuracy_drop"] = metrics["fp32_accuracy"] - metrics["accuracy"]
    return metrics


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
    latency: LatencySpec | None = LatencySpec(),
) -> Compressed:
    """:func:`run_trial`'s flow, keeping the int8 model; errors raise instead of becoming a FAIL
    (a :class:`RecipeError` for a recipe that does not fit the task's model)."""
    if isinstance(task, AnalyticTask):
        raise RecipeError("task: an analytic task has no model to compress; use a real task")
    timer = _Timer()
    kept: list[nn.Module] = []
    metrics = _run(task, recipe, torch.device(device), None, timer, {}, latency, kept)
    return Compressed(kept[0], metrics, timer.timings)


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
    reference: nn.Module,
    layers: list[str],
    example: torch.Tensor,
) -> dict[str, float]:
    """Sizes (of the files the runtime loads), parameter counts and MACs: the same wherever
    they are measured."""
    size, compressed = _measure.artifact_sizes(_runtime.to_portable(int8))
    fp32_size, fp32_compressed = _measure.artifact_sizes(_runtime.to_portable(reference))
    params, nonzero = _measure.count_params(pruned)
    fp32_params, _ = _measure.count_params(baseline)
    removed, zeroed = _measure.pruned_fractions(baseline, pruned, layers)
    metrics: dict[str, Any] = {
        "size_bytes": size,
        "compressed_bytes": compressed,
        "fp32_size_bytes": fp32_size,
        "fp32_compressed_bytes": fp32_compressed,
        "sparsity": removed + zeroed,
        "zero_fraction": zeroed,
        "removed_fraction": removed,
        "params": params,
        "nonzero_params": nonzero,
        "fp32_params": fp32_params,
        "macs": _measure.count_macs(pruned, example),
    }
    return {k: float(v) for k, v in metrics.items()}


def reference_model(
    baseline: nn.Module, example: torch.Tensor, runtime: str = "onnxruntime"
) -> nn.Module:
    """The fp32 model that int8 latency and size are compared with: ``baseline`` in the same
    runtime as the int8 model, with BatchNorm folded and the runtime's graph optimizations on
    (as a deployed fp32 model would run)."""
    return _runtime.reference(baseline, example, runtime)


def measure_latency(
    model: nn.Module, example: torch.Tensor, spec: LatencySpec
) -> _measure.LatencyStats:
    """Time one model as a latency target does: threads pinned, warm-up, then the median (and
    spread) of ``spec.repeats`` timed passes."""
    [stats] = measure_latencies([model], example, spec)
    return stats


def measure_latencies(
    models: Sequence[nn.Module], example: torch.Tensor, spec: LatencySpec
) -> list[_measure.LatencyStats]:
    """:func:`measure_latency` for several models, timed interleaved (so that each sees the
    same load): one :class:`LatencyStats` per model, in order."""
    batch = _measure.example_batch(example, spec.batch_size)
    return _measure.latencies(
        list(models), batch, num_threads=spec.threads, warmup=spec.warmup, repeats=spec.repeats
    )


def _latencies(
    reference: nn.Module, int8: nn.Module, example: torch.Tensor, spec: LatencySpec
) -> dict[str, float]:
    """int8 and fp32 latency, timed interleaved on this machine in one runtime, and their ratio."""
    fp32, measured = measure_latencies([reference, int8], example, spec)
    batch = _measure.example_batch(example, spec.batch_size)
    return {
        **latency_metrics(measured, fp32, spec, batch.shape[0]),
        "fp32_bn_folded": 1.0,
    }


def latency_metrics(
    int8: _measure.LatencyStats, fp32: _measure.LatencyStats, spec: LatencySpec, batch: int
) -> dict[str, float]:
    """The latency metrics of a trial, from its int8 and its fp32 reference's timings."""
    return {
        "latency_ms": int8.median_ms,
        "latency_min_ms": int8.min_ms,
        "latency_max_ms": int8.max_ms,
        "fp32_latency_ms": fp32.median_ms,
        "fp32_latency_min_ms": fp32.min_ms,
        "fp32_latency_max_ms": fp32.max_ms,
        "speedup": fp32.median_ms / int8.median_ms,
        "latency_threads": float(spec.threads),
        "latency_batch": float(batch),
    }
