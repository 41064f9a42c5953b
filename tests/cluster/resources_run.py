"""Run by test_resources.py in its own process: a 3-node Ray cluster on this machine, one worker
node carrying the custom resource ``fast``. The task module lives in a folder that only the
driver can import, so the sweep works only if it is shipped to the workers. Prints JSON."""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from storage import Store
from sweep import ConfigError, connect_ray, parse_config, run_sweep
from tests.cluster.cluster_runner import report

MODULE = '''"""A user's task module, outside any installed package."""
import os

from tests.cluster.marking_task import make

HERE = os.path.dirname(os.path.abspath(__file__))
'''


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    fast = cluster.add_node(num_cpus=1, resources={"fast": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    workdir = Path(tempfile.mkdtemp())
    (workdir / "user_code").mkdir()
    (workdir / "user_code" / "shipped_task.py").write_text(MODULE)
    markers = workdir / "markers"
    markers.mkdir()
    sys.path.insert(0, str(workdir / "user_code"))  # the driver's view only, not the workers'
    connect_ray(cluster.address, "shipped_task:make")
    store = Store(f"sqlite:///{workdir / 's.db'}")

    def config(name: str, **resources: object) -> object:
        return parse_config(
            {
                "name": name,
                "task": "shipped_task:make",
                "task_settings": {"marker_dir": str(markers), "trial_seconds": 0.2},
                "budget": {"n_trials": 4},
                "resources": {"cpus_per_trial": 1, **resources},
            }
        )

    run_sweep(config("fast", custom={"fast": 1}), store)  # type: ignore[arg-type]
    trials = store.trials("fast")
    errors = {}
    for name, resources in {
        "missing": {"custom": {"missing": 1}},
        "gpu": {"gpus_per_trial": 0.5},
    }.items():
        try:
            run_sweep(config(name, **resources), store)  # type: ignore[arg-type]
        except ConfigError as exc:
            errors[name] = str(exc)

    @ray.remote(num_cpus=1)
    def shipped_from() -> str:
        return str(importlib.import_module("shipped_task").HERE)

    report(
        {
            "states": list(trials["state"]),
            "marked_nodes": sorted(p.name for p in markers.iterdir()),
            "fast_node": fast.node_id,
            "user_folder": str(workdir / "user_code"),
            "worker_imports_from": ray.get(shipped_from.remote()),
            "errors": errors,
            "sweeps": [s.name for s in store.list_sweeps()],
        }
    )
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
