"""Run by test_latency_target.py in its own process: a cluster on this machine with a training
node and a node carrying the custom resource ``target_test``. Prints JSON about where trials
were trained and timed, and how a sweep naming a missing target fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from storage import Store
from sweep import parse_config, run_sweep
from tests.cluster.cluster_runner import report

SWEEP = {
    "task": "digits",
    "sampler": "random",
    "budget": {"n_trials": 3},
    "search_space": {"methods": ["unstructured"], "orders": ["prune_ptq"]},
    "trial": {"finetune_epochs": 0, "calibration_batches": 2},
    # Training needs 2 CPUs: only the training node has them; the target node has 1.
    "resources": {"cpus_per_trial": 2},
}


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    trainer = cluster.add_node(num_cpus=2)
    target = cluster.add_node(num_cpus=1, resources={"target_test": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    workdir = Path(tempfile.mkdtemp())
    store = Store(f"sqlite:///{workdir / 's.db'}")
    latency = {"target": "target_test", "threads": 1, "repeats": 5}
    run_sweep(parse_config({**SWEEP, "name": "timed", "latency": latency}), store)
    trials = store.trials("timed")

    def launch(name: str, latency: dict[str, object]) -> subprocess.CompletedProcess[str]:
        config = workdir / f"{name}.yaml"
        config.write_text(json.dumps({**SWEEP, "name": name, "latency": latency}))
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "sweep",
                "launch",
                str(config),
                "--address",
                cluster.address,
                "--storage",
                f"sqlite:///{workdir / 's.db'}",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            env=os.environ,
        )

    cli = launch("missing", {"target": "target_missing"})
    # More threads than the target node has cores: found when the baseline is timed, before
    # any trial (a measurement holds no CPU of the node, so this would otherwise just run).
    threads = launch("threads", {"target": "target_test", "threads": 512})
    report(
        {
            "states": list(trials["state"]),
            "latency_nodes": list(trials["latency_node"]),
            "workers": list(trials["worker"]),
            "measured_on": list(trials["measured_on"]),
            "latency_ms": list(trials["latency_ms"]),
            "speedup": list(trials["speedup"]),
            "speedup_low": [None if v != v else v for v in trials["speedup_low"]],
            "speedup_high": [None if v != v else v for v in trials["speedup_high"]],
            # The first timing of a trial the sweep timed again at its end.
            "once": [
                (m.get("latency_ms_once", m["latency_ms"]), m.get("speedup_once", m["speedup"]))
                for m in trials["metrics"]
            ],
            "baseline": store.get_sweep("timed").config["latency_baseline"],
            "trainer": trainer.node_id,
            "target": target.node_id,
            "missing_rc": cli.returncode,
            "missing_stderr": cli.stderr,
            "threads_rc": threads.returncode,
            "threads_stderr": threads.stderr,
            "sweeps": [s.name for s in store.list_sweeps()],
        }
    )
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
