"""Per-trial custom resources, fail-fast on resources no node has, and the user's task module
shipped to the workers of a cluster."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_custom_resources_and_shipped_task_module() -> None:
    run = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("resources_run.py"))],
        capture_output=True,
        text=True,
        timeout=420,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["states"] == ["COMPLETE"] * 4
    # Every trial ran on the one node that carries the custom resource.
    assert found["marked_nodes"] == [found["fast_node"]]
    # Workers import the task from the shipped copy, not from the driver's folder.
    assert not found["worker_imports_from"].startswith(found["user_folder"])
    missing, gpu = found["errors"]["missing"], found["errors"]["gpu"]
    assert missing.startswith("resources.custom: no node of the Ray cluster carries 'missing'")
    assert gpu.startswith("resources.gpus_per_trial: no node of the Ray cluster carries 'GPU'")
    assert "\n" not in missing + gpu
    # Neither failed sweep was created: a failed start stores nothing.
    assert found["sweeps"] == ["fast"]
