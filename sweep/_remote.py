"""What runs on Ray workers. Workers get the task spec and a recipe; they never see the store."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import ray
import torch

from trials import (
    AnalyticTask,
    Recipe,
    Task,
    TrialPruned,
    TrialResult,
    load_task,
    prunable_layers,
    run_trial,
    structured_prunable,
)

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


def describe_task(spec: str, settings: dict[str, Any]) -> TaskInfo:
    """Build (and cache on this node) the trained baseline; report its layers and fp32 metrics."""
    task = _task(spec, settings)
    model = task.build_model()
    layers = prunable_layers(model)
    if isinstance(task, AnalyticTask):
        metrics = task.analytic_metrics(Recipe())
        prunable: dict[str, str | None] = dict.fromkeys(layers)  # simulated: any method goes
    else:
        metrics = task.evaluate(model, torch.device("cpu"))
        prunable = structured_prunable(model, task.example_input())
    return TaskInfo(
        name=task.name,
        layers=layers,
        fp32_metrics={k: float(v) for k, v in metrics.items()},
        params=sum(p.numel() for p in model.parameters()),
        structured_prunable=prunable,
        layer_params={name: model.get_parameter(f"{name}.weight").numel() for name in layers},
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

    def start(self, sweep: str, number: int) -> int:
        key = (sweep, number)
        self._attempts[key] = self._attempts.get(key, 0) + 1
        return self._attempts[key]

    def report(self, sweep: str, number: int, step: int, value: float) -> bool:
        self._reports.setdefault(sweep, []).append((number, step, value))
        return (sweep, number) in self._stop

    def drain(self, sweep: str) -> list[tuple[int, int, float]]:
        return self._reports.pop(sweep, [])

    def stop(self, sweep: str, number: int) -> None:
        self._stop.add((sweep, number))

    def forget(self, sweep: str) -> None:
        """Drop a finished sweep's state (its name may be launched again with --replace)."""
        self._attempts = {k: v for k, v in self._attempts.items() if k[0] != sweep}
        self._stop = {k for k in self._stop if k[0] != sweep}
        self._reports.pop(sweep, None)


@dataclass(frozen=True)
class TrialOutcome:
    result: TrialResult
    attempt: int
    node: str


def execute_trial(
    spec: str,
    settings: dict[str, Any],
    recipe: dict[str, Any],
    sweep: str,
    number: int,
    monitor: Any,  # ray.actor.ActorHandle of TrialMonitor
    report_intermediate: bool,
    latency_threads: int,
    latency_repeats: int,
    cpus: float,
    use_gpu: bool,
) -> TrialOutcome:
    attempt = int(ray.get(monitor.start.remote(sweep, number)))
    torch.set_num_threads(max(1, int(cpus)))
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"

    def report(step: int, metrics: dict[str, float]) -> None:
        if ray.get(monitor.report.remote(sweep, number, step, float(metrics["accuracy"]))):
            raise TrialPruned(f"stopped early at step {step}: intermediate accuracy too low")

    result = run_trial(
        _task(spec, settings),
        Recipe.from_dict(recipe),
        device=device,
        report=report if report_intermediate else None,
        latency_threads=latency_threads,
        latency_repeats=latency_repeats,
    )
    return TrialOutcome(result, attempt, ray.get_runtime_context().get_node_id())
