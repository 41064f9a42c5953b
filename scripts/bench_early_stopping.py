"""Early stopping on the ``digits`` task: compute saved and Pareto front lost, per Optuna pruner.

Runs the same sweep (same seed, budget, search space; real training) with ``early_stopping.pruner``
``none``, ``median`` and ``successive_halving`` on a local Ray (one CPU per trial), after a short
warm-up sweep that starts the workers and trains (or loads) the cached fp32 baseline. Per pruner:

- ``compute_s``: the trials' own compute, summed: every phase the worker timed (build, prune,
  fine-tune, QAT, quantize, evaluate, measure), for COMPLETE, PRUNED and FAIL trials alike.
  ``held_s`` is the driver-side sum (submitted -> collected; it includes queueing).
- ``compute_saved_fraction`` = 1 - compute_s / compute_s(none); ``wall_s`` of the sweep.
- ``epochs_trained``: training epochs run (a COMPLETE trial its recipe's fine-tune + QAT epochs, a
  stopped one as many as it reported), and ``epochs_saved_fraction`` against ``none``: the same
  saving counted in epochs, which a busy machine does not blur as it blurs seconds.
- ``hypervolume_ratio``: hypervolume of the COMPLETE trials' front over (accuracy max,
  compressed_bytes min, latency_ms min), divided by pruner ``none``'s. Objectives are normalized
  before: accuracy by the fp32 accuracy stored in the sweep config (``fp32_metrics``),
  compressed_bytes by the trial's ``fp32_compressed_bytes``, latency_ms by the trial's
  ``fp32_latency_ms`` (measured in the same process as the int8 model). Reference point: accuracy
  0.9 x fp32 (a model 10% worse than fp32 counts for nothing), size and latency of fp32 (1, 1).
  ``hypervolume_ratio_ref0`` uses accuracy 0 instead of 0.9 x fp32.
- ``best_compressed_bytes_1pct``: the smallest compressed_bytes of a COMPLETE trial whose
  accuracy_drop is at most 0.01 (one point below the fp32 baseline).

Both orders prune first and report the pruned model's accuracy after each fine-tune (and QAT)
epoch; ``--orders`` restricts the search. A stopped trial learns the driver's verdict on the very
report that condemned it (the worker waits for it), so it trains no epoch past that report.

Prints one JSON object and writes it to ``scripts/results/bench_early_stopping.json``.

    python scripts/bench_early_stopping.py [--trials 30] [--epochs 4] [--seeds 0 1]
        [--orders prune_ptq prune_qat] [--store URL]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
from machine import measured_on

from storage import Store
from sweep import connect_ray, parse_config, run_sweep
from trials import ORDERS

PRUNERS = ("none", "median", "successive_halving")
RESULTS = Path(__file__).resolve().parent / "results" / "bench_early_stopping.json"
REFERENCE_ACCURACY = 0.9  # of the fp32 accuracy


def _config(
    name: str, pruner: str, seed: int, args: argparse.Namespace, trials: int
) -> dict[str, Any]:
    return {
        "name": name,
        "task": "digits",
        "seed": seed,
        "sampler": "tpe",  # the sampler of the figures in the README
        "budget": {"n_trials": trials},
        "search_space": {"orders": args.orders},
        "trial": {"finetune_epochs": args.epochs, "qat_epochs": 1},
        "early_stopping": {
            "pruner": pruner,
            "startup_trials": args.startup_trials,
            "warmup_steps": args.warmup_steps,
        },
        "resources": {"cpus_per_trial": 1},
    }


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume dominated by ``points`` (rows, every column minimized) up to
    ``reference``, for 2 or 3 columns: slices along the last column, 2-D areas within."""
    points = points[np.all(points < reference, axis=1)]
    if len(points) == 0:
        return 0.0
    if points.shape[1] == 2:
        area, best_y = 0.0, reference[1]
        for x, y in sorted(map(tuple, points)):
            if y < best_y:
                area += (reference[0] - x) * (best_y - y)
                best_y = y
        return area
    order = np.argsort(points[:, -1])
    points = points[order]
    volume = 0.0
    for i in range(len(points)):
        top = points[i + 1, -1] if i + 1 < len(points) else reference[-1]
        if top > points[i, -1]:
            volume += hypervolume(points[: i + 1, :-1], reference[:-1]) * (top - points[i, -1])
    return volume


def _normalized(complete: pd.DataFrame, fp32_accuracy: float) -> np.ndarray:
    """Minimized, fp32-relative objectives: 1 - accuracy/fp32, bytes/fp32, latency/fp32."""
    fp32_bytes = complete["metrics"].map(lambda m: m["fp32_compressed_bytes"]).astype(float)
    fp32_latency = complete["metrics"].map(lambda m: m["fp32_latency_ms"]).astype(float)
    return np.column_stack(
        [
            1.0 - complete["accuracy"].to_numpy(float) / fp32_accuracy,
            complete["compressed_bytes"].to_numpy(float) / fp32_bytes.to_numpy(),
            complete["latency_ms"].to_numpy(float) / fp32_latency.to_numpy(),
        ]
    )


def _epochs_trained(store: Store, name: str, frame: pd.DataFrame) -> int:
    """Training epochs the trials ran: a COMPLETE trial its recipe's, a stopped one as many as
    the intermediate values it reported (one per epoch). Unlike seconds, immune to a busy box."""
    reported = store.intermediate_values(name).groupby("number").size()
    total = 0
    for row in frame.to_dict(orient="records"):
        recipe = row["recipe"]
        if row["state"] == "COMPLETE":
            qat = recipe["qat_epochs"] if recipe["order"] == "prune_qat" else 0
            total += int(recipe["finetune_epochs"]) + int(qat)
        else:
            total += int(reported.get(row["number"], 0))
    return total


def _summary(store: Store, name: str) -> dict[str, Any]:
    frame = store.trials(name)
    wall = (frame["finished_at"].max() - frame["started_at"].min()).total_seconds()
    fp32_accuracy = float(store.get_sweep(name).config["fp32_metrics"]["accuracy"])
    complete = frame[frame["state"] == "COMPLETE"]
    points = _normalized(complete, fp32_accuracy)
    reference = np.array([1.0 - REFERENCE_ACCURACY, 1.0, 1.0])
    within = complete[complete["accuracy_drop"] <= 0.01]
    states = frame["state"].value_counts().to_dict()
    return {
        "trials": len(frame),
        "complete": int(states.get("COMPLETE", 0)),
        "pruned": int(states.get("PRUNED", 0)),
        "failed": int(states.get("FAIL", 0)),
        "wall_s": wall,
        "compute_s": float(frame["timings"].map(lambda t: sum(t.values())).sum()),
        "held_s": float(frame["duration_s"].sum()),
        "epochs_trained": _epochs_trained(store, name, frame),
        # Each skips quantization, evaluation and measurement as well as its remaining epochs.
        "finalized": int(frame["timings"].map(lambda t: "quantize_s" in t).sum()),
        "hypervolume": hypervolume(points, reference),
        "hypervolume_ref0": hypervolume(points, np.array([1.0, 1.0, 1.0])),
        "best_accuracy": float(complete["accuracy"].max()),
        "best_compressed_bytes_1pct": (
            int(within["compressed_bytes"].min()) if len(within) else None
        ),
        "fp32_accuracy": fp32_accuracy,
        "pruned_at_step": _pruned_steps(store, name, frame),
    }


def _pruned_steps(store: Store, name: str, frame: pd.DataFrame) -> dict[str, int]:
    """How many intermediate values each PRUNED trial had reported when it stopped."""
    values = store.intermediate_values(name)
    pruned = set(frame.loc[frame["state"] == "PRUNED", "number"])
    counts = values[values["number"].isin(pruned)].groupby("number").size()
    return {str(k): int(v) for k, v in counts.value_counts().sort_index().items()}


def _compare(per_pruner: dict[str, dict[str, Any]]) -> None:
    """Add each pruner's ratios against pruner ``none`` of the same seed."""
    base = per_pruner["none"]
    for summary in per_pruner.values():
        summary["compute_saved_fraction"] = 1.0 - summary["compute_s"] / base["compute_s"]
        summary["epochs_saved_fraction"] = 1.0 - summary["epochs_trained"] / base["epochs_trained"]
        summary["wall_saved_fraction"] = 1.0 - summary["wall_s"] / base["wall_s"]
        for key in ("hypervolume", "hypervolume_ref0"):
            ratio = summary[key] / base[key] if base[key] > 0 else math.nan
            summary[key.replace("hypervolume", "hypervolume_ratio")] = ratio


def _mean(per_seed: dict[str, dict[str, dict[str, Any]]], key: str) -> dict[str, float]:
    return {
        pruner: float(np.mean([runs[pruner][key] for runs in per_seed.values()]))
        for pruner in PRUNERS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=4, help="finetune_epochs (steps to prune at)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--orders", nargs="+", default=list(ORDERS), choices=list(ORDERS))
    parser.add_argument("--startup-trials", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument(
        "--store", help="SQLite/PostgreSQL URL; sweeps already FINISHED there are not run again"
    )
    args = parser.parse_args()
    url = args.store or f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench-es-')) / 's.db'}"
    store = Store(url)
    finished = {s.name for s in store.list_sweeps() if s.status == "FINISHED"}
    per_seed: dict[str, dict[str, dict[str, Any]]] = {}
    for seed in args.seeds:
        runs: dict[str, dict[str, Any]] = {}
        for pruner in PRUNERS:
            name = f"{pruner}-{seed}"
            if name not in finished:
                if not ray.is_initialized():
                    connect_ray(None)
                    # Start the workers and train (or load) the baseline outside the timings.
                    config = _config("warmup", "none", seed, args, 2)
                    run_sweep(parse_config(config), store, replace=True)
                config = _config(name, pruner, seed, args, args.trials)
                run_sweep(parse_config(config), store, replace=True)
            runs[pruner] = _summary(store, name)
        _compare(runs)
        per_seed[str(seed)] = runs
    report: dict[str, Any] = {
        "task": "digits",
        "trials": args.trials,
        "finetune_epochs": args.epochs,
        "orders": args.orders,
        "seeds": args.seeds,
        "startup_trials": args.startup_trials,
        "warmup_steps": args.warmup_steps,
        "per_seed": per_seed,
        "compute_saved_fraction": _mean(per_seed, "compute_saved_fraction"),
        "epochs_saved_fraction": _mean(per_seed, "epochs_saved_fraction"),
        "wall_saved_fraction": _mean(per_seed, "wall_saved_fraction"),
        "hypervolume_ratio": _mean(per_seed, "hypervolume_ratio"),
        "measured_on": measured_on(),
    }
    text = json.dumps(report, indent=2)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
