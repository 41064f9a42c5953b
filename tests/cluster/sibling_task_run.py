"""Run by test_sibling_task.py in its own process: a user's folder outside the repo holds a task
file that imports the model file beside it (and a stray ``yaml.py`` that must never run). On a
``ray.cluster_utils`` cluster whose trials all run on a worker node, ``sweep launch`` is run from
that folder with the task given by file path and by module name, then ``sweep apply``. Prints
JSON: each command's exit code and stderr, the trials' states, and whether the stray ran."""

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
from tests.cluster.cluster_runner import report

MODELS = """
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.body(x))
"""
TASKS = """
import torch
from torch import nn

from models import Net


class Task:
    name = "beside"

    def build_model(self):
        torch.manual_seed(0)
        return Net().eval()

    def train_batches(self):
        g = torch.Generator().manual_seed(0)
        return [(torch.randn(16, 16, generator=g), torch.randint(0, 4, (16,), generator=g))]

    calibration_batches = validation_batches = train_batches

    def loss(self, output, target):
        return nn.functional.cross_entropy(output, target)

    def evaluate(self, model, device):
        inputs, targets = self.train_batches()[0]
        return {"accuracy": float((model(inputs).argmax(1) == targets).float().mean())}

    def example_input(self):
        return torch.zeros(4, 16)


def make():
    return Task()
"""
SWEEP = {
    "sampler": "random",
    "budget": {"n_trials": 2},
    "trial": {"finetune_epochs": 0, "calibration_batches": 1},
    "latency": {"repeats": 3},
}


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="user-project-"))
    marker = folder / "stray-ran.txt"
    (folder / "models.py").write_text(MODELS)
    (folder / "user_tasks.py").write_text(TASKS)
    (folder / "yaml.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=2)  # every trial runs here, not in the driver's process
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    sweep = str(Path(sys.executable).with_name("sweep"))  # as a user runs it: the entry point
    storage = f"sqlite:///{folder / 'sweeps.db'}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    runs = {}
    for name, task in (("by_file", "user_tasks.py:make"), ("by_module", "user_tasks:make")):
        (folder / f"{name}.yaml").write_text(json.dumps({**SWEEP, "name": name, "task": task}))
        argv = [sweep, "launch", f"{name}.yaml", "--address", cluster.address, "--storage", storage]
        runs[name] = subprocess.run(
            argv, cwd=folder, capture_output=True, text=True, timeout=300, env=env
        )
    store = Store(storage)
    done = store.trials("by_module", states=["COMPLETE"])
    recipe = folder / "recipe.json"
    recipe.write_text(json.dumps({**done["recipe"].iloc[0], "source": {"task": "user_tasks:make"}}))
    runs["apply"] = subprocess.run(
        [sweep, "apply", "recipe.json", "-o", "model.onnx"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    report(
        {
            "codes": {name: run.returncode for name, run in runs.items()},
            "stderr": {name: run.stderr[-3000:] for name, run in runs.items()},
            "states": {
                name: list(store.trials(name)["state"]) for name in ("by_file", "by_module")
            },
            "stray_ran": marker.exists(),
            "model_bytes": (folder / "model.onnx").stat().st_size,
        }
    )
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
