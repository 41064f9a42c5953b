"""One sweep's int8 latencies measured on two differently configured latency targets.

Starts a Ray cluster on this machine (``ray.cluster_utils``): a training node (2 CPUs) and two
timing-only target nodes (no CPU, as ``cluster.yaml``'s ``x86_target``), ``target_a`` (timed with
1 thread) and ``target_b`` (timed with 2 threads). The same sweep config (random sampler, same
seed) runs once per target, and the script checks that both asked the same recipes in the same
order; every trial trains on the training node. Prints one JSON object with, per target, the fp32
reference's latency spread (measured once on it), each trial's int8 latency, and the per-recipe
ratio ``target_a / target_b``. All nodes share this machine's cores, so a timing can overlap the
next trial's training: outliers show in the spread.

    python scripts/bench_targets.py [--trials 6] [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import ray
from machine import measured_on
from ray.cluster_utils import Cluster

from storage import Store
from sweep import parse_config, run_sweep

TARGETS = {"target_a": 1, "target_b": 2}  # resource name -> threads it times with


def _sweep(store: Store, target: str, threads: int, trials: int, repeats: int) -> dict[str, Any]:
    config = parse_config(
        {
            "name": target,
            "task": "digits",
            "sampler": "random",
            "seed": 0,
            "budget": {"n_trials": trials},
            "search_space": {"methods": ["unstructured"]},
            "trial": {"finetune_epochs": 1, "calibration_batches": 4},
            "latency": {"target": target, "threads": threads, "repeats": repeats},
            "resources": {"cpus_per_trial": 2, "max_concurrent": 1},
        }
    )
    run_sweep(config, store)
    frame = store.trials(target)
    done = frame[frame["state"] == "COMPLETE"]
    return {
        "baseline": store.get_sweep(target).config["latency_baseline"],
        "latency_ms": {
            int(n): float(v) for n, v in zip(done["number"], done["latency_ms"], strict=True)
        },
        "speedup": {int(n): float(v) for n, v in zip(done["number"], done["speedup"], strict=True)},
        "orders": {
            int(n): str(r["order"]) for n, r in zip(done["number"], done["recipe"], strict=True)
        },
        "recipes": [json.dumps(r, sort_keys=True) for r in frame.sort_values("number")["recipe"]],
        "measured_on": sorted(set(done["measured_on"])),
        "latency_nodes": sorted(set(done["latency_node"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", type=Path, default=None, help="Also write the JSON here.")
    args = parser.parse_args()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=2)  # trains: the only node with CPUs
    nodes = {name: cluster.add_node(num_cpus=0, resources={name: 1}) for name in TARGETS}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
    try:
        store = Store(f"sqlite:///{Path(tempfile.mkdtemp()) / 'targets.db'}")
        found = {
            name: _sweep(store, name, threads, args.trials, args.repeats)
            for name, threads in TARGETS.items()
        }
    finally:
        ray.shutdown()
        cluster.shutdown()
    recipes = [found[name].pop("recipes") for name in TARGETS]
    if recipes[0] != recipes[1]:
        raise SystemExit("the two sweeps asked different recipes: their latencies do not compare")
    a, b = found["target_a"]["latency_ms"], found["target_b"]["latency_ms"]
    ratios = {n: a[n] / b[n] for n in sorted(set(a) & set(b))}
    result = {
        "task": "digits",
        "trials": args.trials,
        "same_recipes": True,
        "targets": {
            name: {**found[name], "node": nodes[name].node_id, "threads": TARGETS[name]}
            for name in TARGETS
        },
        "int8_latency_ratio_a_over_b": ratios,
        "median_int8_latency_ratio_a_over_b": statistics.median(ratios.values())
        if ratios
        else None,
        "fp32_latency_ratio_a_over_b": found["target_a"]["baseline"]["median_ms"]
        / found["target_b"]["baseline"]["median_ms"],
    }
    result["measured_on"] = measured_on()
    text = json.dumps(result, indent=2)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
