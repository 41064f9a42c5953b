"""Run by test_latency_target.py in its own process: a cluster whose latency target times models
slower than three training slots train them. Prints JSON: how many trained models waited for the
target at most, against the bound the driver keeps (``--no-bound``: the bound lifted, to see the
backlog it prevents)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from storage import Store
from sweep import Progress, _submission, parse_config, run_sweep
from tests.cluster.cluster_runner import report

TRAINING_SLOTS = 3
SWEEP = {
    "name": "paced",
    "task": "digits",
    "sampler": "random",
    "budget": {"n_trials": 14},
    "search_space": {"methods": ["unstructured"], "orders": ["prune_ptq"]},
    "trial": {"finetune_epochs": 0, "calibration_batches": 1},
    # One timing at a time, each far longer than a trial's training.
    "latency": {"target": "target_slow", "threads": 1, "batch_size": 256, "repeats": 400},
}


def main() -> None:
    if "--no-bound" in sys.argv:
        _submission.TARGET_BACKLOG = 10**6
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=TRAINING_SLOTS)
    cluster.add_node(num_cpus=0, resources={"target_slow": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    store = Store(f"sqlite:///{Path(tempfile.mkdtemp()) / 's.db'}")
    waiting: list[int] = []

    def seen(progress: Progress) -> None:
        if progress.phase is None:
            waiting.append(progress.timing)

    run_sweep(parse_config(SWEEP), store, on_progress=seen)
    trials = store.trials("paced")
    report(
        {
            "states": list(trials["state"]),
            "latency_nodes": sorted(set(trials["latency_node"])),
            "max_waiting": max(waiting),
            "bound": _submission.TARGET_BACKLOG * 1 + TRAINING_SLOTS + 1,
        }
    )
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
