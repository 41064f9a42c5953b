"""What each compression technique buys on the built-in tasks, measured end to end.

For each task, one ``run_trial`` per variant, against the task's fp32 baseline measured in the
same trial: granularity (per_tensor vs per_channel), order (prune_ptq vs prune_qat), and pruning
method (unstructured vs structured) at a few amounts. Prints one JSON object; every ratio is
int8 / fp32 (``latency_ratio`` < 1 is faster, ``speedup`` is its inverse).

    python scripts/bench_compression.py [--tasks digits shapes] [--amounts 0.3 0.5 0.7]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from machine import measured_on

import trials
from trials import LatencySpec, LayerSpec, Recipe, Task, load_task, prunable_layers, run_trial


def _summary(task: Task, recipe: Recipe, repeats: int) -> dict[str, Any]:
    result = run_trial(task, recipe, latency=LatencySpec(repeats=repeats))
    if result.state != "COMPLETE":
        return {"state": result.state, "error": result.error}
    m = result.metrics
    return {
        "accuracy": m["accuracy"],
        "accuracy_drop": m["accuracy_drop"],
        "size_ratio": m["size_bytes"] / m["fp32_size_bytes"],
        "compressed_ratio": m["compressed_bytes"] / m["fp32_compressed_bytes"],
        "latency_ratio": m["latency_ms"] / m["fp32_latency_ms"],
        "speedup": m["speedup"],
        "params_ratio": m["params"] / m["fp32_params"],
        "macs": m["macs"],
        "sparsity": m["sparsity"],
        "trial_s": sum(result.timings.values()),
    }


def _structurable(task: Task, layers: list[str]) -> list[str]:
    if "structured" not in trials.METHODS:
        return []
    check = trials.structured_prunable(task.build_model(), task.example_input())
    return [name for name in layers if check.get(name) is None]


def bench_task(name: str, amounts: list[float], repeats: int) -> dict[str, Any]:
    task = load_task(name)
    layers = prunable_layers(task.build_model())
    fp32 = run_trial(task, Recipe(finetune_epochs=0), latency=LatencySpec(repeats=repeats)).metrics
    report: dict[str, Any] = {
        "fp32": {k: fp32[f"fp32_{k}"] for k in ("accuracy", "size_bytes", "latency_ms", "params")},
        "layers": len(layers),
        "granularity": {},
        "order": {},
        "method": {},
    }
    for granularity in ("per_tensor", "per_channel"):
        recipe = Recipe(granularity=granularity, finetune_epochs=0)
        report["granularity"][granularity] = _summary(task, recipe, repeats)
    half = {n: LayerSpec(0.5) for n in layers}
    for order in ("prune_ptq", "prune_qat"):
        recipe = Recipe(layers=half, order=order, granularity="per_channel")
        report["order"][order] = _summary(task, recipe, repeats)
    structurable = _structurable(task, layers)
    for amount in amounts:
        key = f"{amount:.2f}"
        unstructured = {n: LayerSpec(amount) for n in layers}
        report["method"].setdefault("unstructured", {})[key] = _summary(
            task, Recipe(layers=unstructured), repeats
        )
        if structurable:
            structured = {n: LayerSpec(amount, method="structured") for n in structurable}
            report["method"].setdefault("structured", {})[key] = _summary(
                task, Recipe(layers=structured), repeats
            )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits"])
    parser.add_argument("--amounts", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {
        "torch": torch.__version__,
        "threads": 1,
        "tasks": {name: bench_task(name, args.amounts, args.repeats) for name in args.tasks},
        "measured_on": measured_on(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
