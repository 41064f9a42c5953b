"""Bounds from a sensitivity scan vs none, at the same trial budget. Prints one JSON object.

For each seed, two sweeps of ``--trials`` trials on one task: ``plain`` (the config's amount grid
for every layer) and ``bounded`` (``search_space.bounds_from``: each layer capped at its safe
amount in a scan run once beforehand, and ``--uniform`` uniform recipes enqueued first). Scored
on the front of accuracy vs compressed_bytes: the hypervolume of (1 - accuracy,
compressed_bytes / fp32_compressed_bytes) against the reference point (1, 1), and the smallest
compressed_bytes and latency_ms among trials within ``--max-drop`` of fp32. The scan's own
trial count is reported: it is the price of the bounds.

    python scripts/bench_scan_bounds.py                     # synthetic task (exact, seconds)
    python scripts/bench_scan_bounds.py --task digits --scan-amounts 0.2,0.4,0.6,0.8,0.9
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from storage import Store
from sweep import _bounds, _sensitivity, connect_ray, run_sweep
from sweep._config import SweepConfig
from sweep._config_read import parse_config


def hypervolume(loss: np.ndarray, cost: np.ndarray) -> float:
    """Area dominated by the points (both minimized) inside the box [0, 1] x [0, 1]."""
    keep = (loss < 1) & (cost < 1)
    order = np.argsort(cost[keep], kind="stable")
    area, best_loss = 0.0, 1.0
    costs, losses = cost[keep][order], loss[keep][order]
    for i, (c, ell) in enumerate(zip(costs, losses, strict=True)):
        best_loss = min(best_loss, ell)
        right = costs[i + 1] if i + 1 < len(costs) else 1.0
        area += (right - c) * (1.0 - best_loss)
    return float(area)


def score(store: Store, name: str, max_drop: float) -> dict[str, Any]:
    trials = store.trials(name, states=["COMPLETE"])
    loss = 1.0 - trials["accuracy"].to_numpy(float)
    cost = (trials["compressed_bytes"] / trials["fp32_compressed_bytes"]).to_numpy(float)
    within = trials[trials["accuracy_drop"] <= max_drop]
    return {
        "hypervolume": hypervolume(loss, cost),
        "complete": len(trials),
        "within_drop": len(within),
        "best_compressed_bytes": float(within["compressed_bytes"].min()) if len(within) else None,
        "best_latency_ms": float(within["latency_ms"].min()) if len(within) else None,
    }


def config_for(args: argparse.Namespace, name: str, seed: int, bounded: bool) -> SweepConfig:
    data: dict[str, Any] = {
        "name": name,
        "task": args.task,
        "seed": seed,
        "sampler": "tpe",  # the sampler of the figures in the README
        "objectives": {"accuracy": "max", "compressed_bytes": "min"},
        "budget": {"n_trials": args.trials},
        "search_space": {
            "amount": {"min": 0.0, "max": 0.95, "step": 0.05},
            "methods": ["unstructured"],
            "orders": ["prune_ptq"],
            "granularities": [args.granularity],
        },
        "trial": {"finetune_epochs": args.finetune_epochs},
        "latency": {"repeats": 5},
    }
    if bounded:
        data["search_space"]["bounds_from"] = {
            "sensitivity": "scan",
            "max_drop": args.max_drop,
            "enqueue_uniform": args.uniform,
        }
    return parse_config(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="synthetic")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--uniform", type=int, default=3)
    parser.add_argument("--granularity", default="per_channel")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--scan-amounts", default=None, help="default: the 0.05 grid")
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    connect_ray(None)
    folder = Path(tempfile.mkdtemp(prefix="bench-scan-bounds-"))
    store = Store(f"sqlite:///{folder / 'bench.db'}")
    base = config_for(args, "scan", 0, bounded=False)
    amounts = (
        _sensitivity.parse_amounts(args.scan_amounts)
        if args.scan_amounts
        else _sensitivity.default_amounts(base)
    )
    started = time.monotonic()
    scan = _sensitivity.run_scan(
        base,
        store,
        name="scan",
        amounts=amounts,
        granularities=(args.granularity,),
        finetune_epochs=0,
    )
    scan_s = time.monotonic() - started
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "bounded": []}
    for seed in range(args.seeds):
        for arm in runs:
            name = f"{arm}-{seed}"
            run_sweep(config_for(args, name, seed, arm == "bounded"), store)
            runs[arm].append({"seed": seed, **score(store, name, args.max_drop)})
    summary: dict[str, Any] = {}
    for arm, results in runs.items():
        summary[arm] = {
            "hypervolume_mean": statistics.mean(r["hypervolume"] for r in results),
            "runs": results,
        }
    bounds = _bounds.safe_amounts(store, "scan", args.max_drop)
    print(
        json.dumps(
            {
                "task": args.task,
                "trials_per_sweep": args.trials,
                "seeds": args.seeds,
                "max_drop": args.max_drop,
                "granularity": args.granularity,
                "scan_trials": scan.done,
                "scan_seconds": round(scan_s, 1),
                "safe_amounts": bounds,
                "hypervolume_ratio_bounded_vs_plain": summary["bounded"]["hypervolume_mean"]
                / summary["plain"]["hypervolume_mean"],
                **summary,
            },
            indent=1,
        )
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
