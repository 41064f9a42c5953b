"""What runs on Ray workers. Workers get the task spec and a recipe; they never see the store."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from trials import (
    AnalyticTask,
    Recipe,
    Task,
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
    )


def execute_trial(
    spec: str,
    settings: dict[str, Any],
    recipe: dict[str, Any],
    latency_threads: int,
    latency_repeats: int,
    cpus: float,
) -> TrialResult:
    torch.set_num_threads(max(1, int(cpus)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return run_trial(
        _task(spec, settings),
        Recipe.from_dict(recipe),
        device=device,
        latency_threads=latency_threads,
        latency_repeats=latency_repeats,
    )
