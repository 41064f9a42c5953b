"""One trial end to end, built from the two public calls users make in their own training."""

from __future__ import annotations

import itertools
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from trials import _measure, _runtime
from trials._fold import recalibrate_batchnorm
from trials._measure import LatencySpec, LatencyStats
from trials._pruning import enforce_masks, prunable_layers, prune_model
from trials._recipe import Recipe, RecipeError
from trials._reference import (
    Reference,
    channels_removed,
    compare_latency,
    measurements,
    reference_model,
)
from trials._structured_prune import prune_structured
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
    # The fp32 reference's timing, when this trial took it (its hardware class had none).
    reference_latency: LatencyStats | None = None


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
    reference: Reference = Reference(),
) -> TrialResult:
    """Prune, fine-tune, quantize and measure one recipe. Never raises for a bad trial: it returns
    a FAIL (or PRUNED) result whose ``error`` says why.

    ``latency`` None skips the latency measurement (the caller measures the model elsewhere, on
    its target hardware: pass ``keep_model=True`` to get the int8 model in ``result.model``).
    ``reference``: what is known of the fp32 baseline (a sweep measures it once); the trial
    measures the rest, and returns the fp32 timing it took in ``result.reference_latency``.
    """
    timer = _Timer()
    intermediate: dict[int, float] = {}
    environment: dict[str, str] = {}
    ran: _Ran | None = None
    try:
        if isinstance(task, AnalyticTask):
            metrics = _simulate(task, recipe, timer)
        else:
            if latency is not None:
                environment = _measure.environment(
                    recipe.backend, latency.threads, _runtime.runtime_version(recipe.runtime)
                )
            ran = _run(
                task,
                recipe,
                torch.device(device),
                report,
                timer,
                intermediate,
                None if latency is None else _Timing(latency, environment, reference),
                reference,
            )
            metrics = ran.metrics
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
    model = ran.model if keep_model and ran is not None else None
    timed = ran.reference_latency if ran is not None else None
    return TrialResult(
        "COMPLETE",
        metrics,
        timer.timings,
        None,
        worker_name(),
        intermediate,
        environment,
        model,
        timed,
    )


def _simulate(task: AnalyticTask, recipe: Recipe, timer: _Timer) -> dict[str, float]:
    with timer.phase("build_s"):
        recipe.check_layers(prunable_layers(task.build_model()))
    with timer.phase("simulate_s"):
        time.sleep(task.trial_seconds)
    return {k: float(v) for k, v in task.analytic_metrics(recipe).items()}


@dataclass(frozen=True)
class _Timing:
    """How to time a trial's model here: the spec, where it runs, what is known already."""

    spec: LatencySpec
    environment: dict[str, str]
    reference: Reference

    def known(self) -> LatencyStats | None:
        return self.reference.latencies.get(_measure.hardware_class(self.environment))


@dataclass(frozen=True)
class _Ran:
    metrics: dict[str, float]
    model: nn.Module
    reference_latency: LatencyStats | None


def _run(
    task: Task,
    recipe: Recipe,
    device: torch.device,
    report: ReportFn | None,
    timer: _Timer,
    intermediate: dict[int, float],
    timing: _Timing | None,
    reference: Reference,
) -> _Ran:
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
            calibration = task.calibration_batches()
            batches = itertools.islice(calibration, recipe.calibration_batches)
            recalibrate_batchnorm(model, (inputs for inputs, _ in batches))
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
    cpu = torch.device("cpu")
    with timer.phase("evaluate_s"):
        int8_metrics = task.evaluate(int8, cpu)
        fp32_metrics = dict(reference.metrics) or task.evaluate(baseline, cpu)
    with timer.phase("measure_s"):
        fp32_model: list[nn.Module] = []  # the runtime's fp32 model, built only if needed

        def fp32() -> nn.Module:
            if not fp32_model:
                fp32_model.append(reference_model(baseline, example, recipe.runtime))
            return fp32_model[0]

        fp32_sizes = reference.sizes or _measure.artifact_sizes(_runtime.to_portable(fp32()))
        metrics = measurements(baseline, float_model.cpu(), int8, fp32_sizes, layers, example)
        timed = None
        if timing is not None:
            known = timing.known()
            latencies, timed = compare_latency(int8, known or fp32, example, timing.spec)
            metrics.update(latencies)
    metrics["channels_removed"] = float(channels_removed(baseline, float_model, layers))
    metrics.update({k: float(v) for k, v in int8_metrics.items()})
    metrics.update({f"fp32_{k}": float(v) for k, v in fp32_metrics.items()})
    metrics["accuracy_drop"] = metrics["fp32_accuracy"] - metrics["accuracy"]
    return _Ran(metrics, int8, timed)


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
    timing = None
    if latency is not None:
        version = _runtime.runtime_version(recipe.runtime)
        environment = _measure.environment(recipe.backend, latency.threads, version)
        timing = _Timing(latency, environment, Reference())
    ran = _run(task, recipe, torch.device(device), None, timer, {}, timing, Reference())
    return Compressed(ran.model, ran.metrics, timer.timings)
