"""Run by test_node_failure.py in its own process: a sweep on a 3-node Ray cluster on this machine,
where a worker node dies while trials run on it. Prints the stored trials as JSON."""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from storage import Store, SweepNotFoundError
from sweep import parse_config, run_sweep


def _running(store: Store, count: int) -> bool:
    try:
        return store.get_sweep("nodes").counts["RUNNING"] >= count
    except SweepNotFoundError:  # the sweep thread has not created it yet
        return False


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    store = Store(f"sqlite:///{Path(tempfile.mkdtemp()) / 's.db'}")
    config = parse_config(
        {
            "name": "nodes",
            "task": "synthetic",
            "task_settings": {"trial_seconds": 8.0},
            "budget": {"n_trials": 4},
            "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        }
    )
    sweep = threading.Thread(target=run_sweep, args=(config, store))
    sweep.start()
    deadline = time.monotonic() + 60
    while not _running(store, 2):  # both worker nodes busy with a trial
        if time.monotonic() > deadline:
            sys.exit("trials never started")
        time.sleep(0.2)
    time.sleep(5.0)  # past the workers' start-up: both trials are now executing
    cluster.remove_node(workers[0], allow_graceful=False)  # the node dies mid-trial
    cluster.add_node(num_cpus=1)  # and a replacement joins
    sweep.join(timeout=240)
    trials = store.trials("nodes")
    print(
        json.dumps(
            [
                {
                    "number": int(r["number"]),
                    "state": r["state"],
                    "attempt": int(r["attempt"]),
                    "error": r["error"],
                }
                for r in trials.to_dict(orient="records")
            ]
        )
    )
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
