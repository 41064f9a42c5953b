"""What runs on Ray workers. Workers get the task spec and a recipe; they never see the store."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import ray
import torch

from sweep._config import ConfigError
from trials import (
    AnalyticTask,
    LatencySpec,
    LatencyStats,
    Recipe,
    Reference,
    Removable,
    Task,
    TaskError,
    TrialError,
    TrialPruned,
    TrialResult,
    artifact_sizes,
    environment,
    example_batch,
    from_portable,
    hardware_class,
    has_dynamic_layers,
    load_task,
    measure_latencies,
    prunable_layers,
    reference_model,
    report_phase,
    reporting_phases,
    run_trial,
    runtime_version,
    structured_layout,
    to_portable,
)

# How long a worker waits for the driver's early-stopping verdict on a report, and how often
# it asks. The driver judges reports every few hundred milliseconds.
VERDICT_WAIT_S = 5.0
VERDICT_POLL_S = 0.05
# One loaded task per worker process: data and the trained baseline are loaded once, not per trial.
_TASKS: dict[str, Task] = {}


def _task(spec: str, settings: dict[str, Any]) -> Task:
    key = json.dumps([spec, settings], sort_keys=True, default=str)
    if key not in _TASKS:
        _TASKS[key] = load_task(spec, settings)
    return _TASKS[key]


@dataclass(frozen=True)
class TaskInfo:
    name: str
    layers: list[str]
    fp32_metrics: dict[str, float]
    params: int
    # layer -> None if structured pruning can remove its output channels, else why not.
    structured_prunable: dict[str, str | None] = field(default_factory=dict)
    # layer -> its weight count (for search_space.constraints).
    layer_params: dict[str, int] = field(default_factory=dict)
    # Layers that structured pruning removes output channels from together, two or more each
    # (trials.structured_layout: attention q/k/v, convs added in a residual).
    coupled: list[list[str]] = field(default_factory=list)
    # Each layer that can lose output channels: how many channels (attention heads) it has, so
    # that the layerwise sampler models the share a structured amount really removes.
    removable: dict[str, Removable] = field(default_factory=dict)
    # Whether order prune_dynamic has layers to quantize (Linear, LSTM).
    dynamic_layers: bool = False
    # The fp32 model's file in the runtime: (size_bytes, compressed_bytes); None for analytic tasks.
    fp32_sizes: tuple[int, int] | None = None


def describe_task(
    spec: str,
    settings: dict[str, Any],
    runtime: str = "onnxruntime",
    monitor: Any = None,  # ray.actor.ActorHandle of TrialMonitor, to report phases on
    sweep: str = "",
) -> TaskInfo:
    """Build (and cache on this node) the trained baseline; report its layers and fp32 metrics.
    A model that ``runtime`` cannot take (it cannot be exported) is a :class:`TaskError` here,
    before any trial, rather than a failure of every trial. What the task reports meanwhile
    (``trials.report_phase``: its baseline's training epochs) goes to ``monitor``."""
    if monitor is None:
        return _describe_task(spec, settings, runtime)
    with reporting_phases(lambda text: monitor.phase.remote(sweep, text)):
        return _describe_task(spec, settings, runtime)


def _describe_task(spec: str, settings: dict[str, Any], runtime: str) -> TaskInfo:
    report_phase("loading the task")
    task = _task(spec, settings)
    report_phase("building the task's fp32 model")
    model = task.build_model()
    report_phase("evaluating the fp32 baseline")
    layers = prunable_layers(model)
    fp32_sizes = None
    if isinstance(task, AnalyticTask):
        metrics = task.analytic_metrics(Recipe())
        prunable: dict[str, str | None] = dict.fromkeys(layers)  # simulated: any method goes
        coupled: list[list[str]] = []  # an analytic model couples nothing
        removable: dict[str, Removable] = {}  # its structured amounts remove exactly that
    else:
        metrics = task.evaluate(model, torch.device("cpu"))
        prunable, groups, removable = structured_layout(model, task.example_input())
        coupled = [
            list(group)
            for group in groups
            if len(group) > 1 and all(prunable.get(name) is None for name in group)
        ]
        report_phase(f"exporting the model for {runtime}")
        try:
            fp32 = reference_model(model, task.example_input(), runtime)
        except TrialError as exc:
            raise TaskError(f"task: {task.name}: {exc}") from None
        fp32_sizes = artifact_sizes(to_portable(fp32))
    return TaskInfo(
        name=task.name,
        layers=layers,
        fp32_metrics={k: float(v) for k, v in metrics.items()},
        params=sum(p.numel() for p in model.parameters()),
        structured_prunable=prunable,
        layer_params={name: model.get_parameter(f"{name}.weight").numel() for name in layers},
        coupled=coupled,
        removable=removable,
        dynamic_layers=has_dynamic_layers(model),
        fp32_sizes=fp32_sizes,
    )


class TrialMonitor:
    """A small actor on the driver's node: the workers' side channel to the driver.

    It counts the attempts of each trial (Ray re-runs a trial whose worker or node died, and the
    count survives that), and carries intermediate values to the driver and stop decisions back.
    One monitor serves every sweep a driver process runs (an actor takes seconds to start), so
    trials are keyed by ``(sweep, number)``.
    """

    def __init__(self) -> None:
        self._attempts: dict[tuple[str, int], int] = {}
        self._reports: dict[str, list[tuple[int, int, float]]] = {}
        self._stop: set[tuple[str, int]] = set()
        self._decided: dict[tuple[str, int], int] = {}  # the last step the driver judged
        self._phases: dict[str, str] = {}  # what a sweep's task does before its first trial

    def start(self, sweep: str, number: int) -> int:
        key = (sweep, number)
        self._attempts[key] = self._attempts.get(key, 0) + 1
        return self._attempts[key]

    def report(self, sweep: str, number: int, step: int, value: float) -> bool:
        self._reports.setdefault(sweep, []).append((number, step, value))
        return (sweep, number) in self._stop

    def phase(self, sweep: str, text: str) -> None:
        self._phases[sweep] = text

    def take_phase(self, sweep: str) -> str | None:
        """The latest phase reported for ``sweep`` since the last call, if any."""
        return self._phases.pop(sweep, None)

    def drain(self, sweep: str) -> list[tuple[int, int, float]]:
        return self._reports.pop(sweep, [])

    def decide(self, sweep: str, number: int, step: int, stop: bool) -> None:
        """The driver's verdict on a trial's report at ``step``."""
        key = (sweep, number)
        if stop:
            self._stop.add(key)
        self._decided[key] = max(step, self._decided.get(key, -1))

    def verdict(self, sweep: str, number: int, step: int) -> bool | None:
        """Whether to stop, once the driver has judged ``step``; None while it has not."""
        key = (sweep, number)
        if key in self._stop:
            return True
        return False if self._decided.get(key, -1) >= step else None

    def forget(self, sweep: str) -> None:
        """Drop a finished sweep's state (its name may be launched again with --replace)."""
        self._attempts = {k: v for k, v in self._attempts.items() if k[0] != sweep}
        self._stop = {k for k in self._stop if k[0] != sweep}
        self._decided = {k: v for k, v in self._decided.items() if k[0] != sweep}
        self._reports.pop(sweep, None)
        self._phases.pop(sweep, None)


@dataclass(frozen=True)
class TrialOutcome:
    result: TrialResult
    attempt: int
    node: str
    run_s: float = 0.0  # wall time on the worker, from the task's start to its result


def started_worker() -> int:
    """Nothing but this module's imports (torch, the engine), done in a new worker process:
    see ``sweep._submission.start_workers``. Returns the process id."""
    return os.getpid()


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares: put in Ray's object store once (again when the fp32
    reference learns a hardware class), so that a submission serializes only its recipe and
    number (12 arguments with the monitor's actor handle cost 2-4 times as much to submit)."""

    spec: str
    settings: dict[str, Any]
    sweep: str
    monitor: Any  # ray.actor.ActorHandle of TrialMonitor
    report_intermediate: bool
    latency: dict[str, Any]
    time_here: bool
    cpus: float
    use_gpu: bool
    reference: Reference


def execute_trial(
    context: TrialContext, recipe: dict[str, Any], number: int
) -> tuple[TrialOutcome, bytes | None]:
    """Run one trial. Its int8 model is returned beside the outcome, as the runtime's model file
    (bytes) in a second Ray object: unless ``time_here`` it is timed elsewhere (on the latency
    target), and the front's files are timed again at the end of the sweep."""
    started = time.monotonic()
    monitor, sweep = context.monitor, context.sweep
    attempt = int(ray.get(monitor.start.remote(sweep, number)))
    torch.set_num_threads(max(1, int(context.cpus)))
    device = "cuda" if context.use_gpu and torch.cuda.is_available() else "cpu"

    report = reporter(monitor, sweep, number)
    task = _task(context.spec, context.settings)
    result = run_trial(
        task,
        Recipe.from_dict(recipe),
        device=device,
        report=report if context.report_intermediate else None,
        latency=LatencySpec(**context.latency) if context.time_here else None,
        keep_model=True,
        reference=context.reference,
    )
    outcome = TrialOutcome(
        replace(result, model=None), attempt, _node(), time.monotonic() - started
    )
    return outcome, to_portable(result.model) if result.model is not None else None


def reporter(monitor: Any, sweep: str, number: int) -> Callable[[int, dict[str, float]], None]:
    """The ``report`` callback of a trial: sends each intermediate accuracy to the driver and
    raises TrialPruned when the driver stops the trial."""

    def report(step: int, metrics: dict[str, float]) -> None:
        stop = ray.get(monitor.report.remote(sweep, number, step, float(metrics["accuracy"])))
        # Wait (briefly) for the driver's verdict on this very step: without it a hopeless
        # trial would train one more epoch before it learns that it was stopped.
        deadline = time.monotonic() + VERDICT_WAIT_S
        while not stop and time.monotonic() < deadline:
            stop = ray.get(monitor.verdict.remote(sweep, number, step))
            if stop is None:
                time.sleep(VERDICT_POLL_S)
        if stop:
            raise TrialPruned(f"stopped early at step {step}: intermediate accuracy too low")

    return report


def _node() -> str:
    return str(ray.get_runtime_context().get_node_id())


def reference(
    spec: str, settings: dict[str, Any], latency: dict[str, Any], runtime: str
) -> tuple[bytes, torch.Tensor, bool]:
    """The fp32 reference model that int8 latencies are compared with (the runtime's model
    file), the batch that models are timed on, and whether BatchNorm was folded (always, by the
    runtime's graph optimizations): built once on a worker that has the task, timed on the
    targets."""
    task = _task(spec, settings)
    if isinstance(task, AnalyticTask):
        raise TaskError(
            f"latency.target: task {spec!r} is analytic (it has no model to time); "
            "remove latency.target"
        )
    example = task.example_input().cpu()
    model = reference_model(task.build_model().cpu().eval(), example, runtime)
    return to_portable(model), example_batch(example, LatencySpec(**latency).batch_size), True


@dataclass(frozen=True)
class Measurement:
    """A latency timed on a target node, and where; with the fp32 reference's timing when the
    node's hardware class had none yet."""

    stats: LatencyStats
    environment: dict[str, str]
    node: str
    batch: int
    reference: LatencyStats | None = None
    run_s: float = 0.0  # wall time of the timing task on the target


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def measure(
    model: bytes,
    batch: torch.Tensor,
    latency: dict[str, Any],
    runtime: str,
    backend: str,
    reference: list[ray.ObjectRef],
    known: list[str],
) -> Measurement:
    """Time ``model`` (``runtime``'s model file) on ``batch`` here, on a node carrying the latency
    target, threads pinned. When this node's hardware class is not in ``known``, the fp32
    reference (``reference[0]``, fetched only then) is timed too, interleaved with the model."""
    started = time.monotonic()
    spec = replace(LatencySpec(**latency), batch_size=None)  # ``batch`` is already the size
    cores = _cores()
    if spec.threads > cores:
        raise ConfigError(
            f"latency.threads: {spec.threads} threads, but the target node {_node()[:12]} has "
            f"{cores} core{'s' if cores > 1 else ''}; set latency.threads to at most {cores}"
        )
    where = environment(backend, spec.threads, runtime_version(runtime))
    models = [from_portable(model, runtime)]
    timed_reference = bool(reference) and hardware_class(where) not in known
    if timed_reference:
        models.append(from_portable(ray.get(reference[0]), runtime))
    stats = measure_latencies(models, batch, spec)
    return Measurement(
        stats[0],
        where,
        _node(),
        int(batch.shape[0]),
        stats[1] if timed_reference else None,
        time.monotonic() - started,
    )
