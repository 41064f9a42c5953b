"""Run by test_node_failure.py in its own process: a sweep on a 3-node Ray cluster on this machine,
where a worker node dies while trials run on it. Prints the stored trials as JSON."""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from storage import Store
from sweep import parse_config, run_sweep
from tests.cluster.cluster_runner import report


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    workdir = Path(tempfile.mkdtemp())
    markers = workdir / "markers"
    markers.mkdir()
    store = Store(f"sqlite:///{workdir / 's.db'}")
    config = parse_config(
        {
            "name": "nodes",
            "task": "tests.cluster.marking_task:make",
            "task_settings": {"marker_dir": str(markers), "trial_seconds": 6.0},
            "budget": {"n_trials": 4},
            "resources": {"cpus_per_trial": 1, "max_concurrent": 2},
        }
    )
    sweep = threading.Thread(target=run_sweep, args=(config, store))
    sweep.start()
    deadline = time.monotonic() + 120
    victim = None
    while victim is None:  # a worker node on which a trial is running now
        started = {p.name for p in markers.iterdir()}
        victim = next((n for n in workers if n.node_id in started), None)
        if time.monotonic() > deadline:
            sys.exit("no trial started on a worker node")
        time.sleep(0.1)
    time.sleep(1.0)
    cluster.remove_node(victim, allow_graceful=False)  # the node dies mid-trial
    cluster.add_node(num_cpus=1)  # and a replacement joins
    sweep.join(timeout=240)
    trials = store.trials("nodes")
    report(
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
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
