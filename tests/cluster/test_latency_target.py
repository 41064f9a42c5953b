"""Latency measured on the target hardware: a node carrying a custom resource times every
int8 model, training runs elsewhere, and a missing target fails before any trial."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_latency_is_timed_on_the_target_node_and_training_elsewhere() -> None:
    run = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("latency_target_run.py"))],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["states"] == ["COMPLETE"] * 3
    # Every latency was timed on the target node, every trial trained on the other one.
    assert found["latency_nodes"] == [found["target"]] * 3
    assert all(w.startswith(found["trainer"][:12]) for w in found["workers"]), found["workers"]
    baseline = found["baseline"]
    assert baseline["node"] == found["target"] and baseline["target"] == "target_test"
    assert baseline["min_ms"] <= baseline["median_ms"] <= baseline["max_ms"]
    assert len(set(found["measured_on"])) == 1 and "onednn, 1 thread" in found["measured_on"][0]
    assert found["measured_on"][0] == baseline["measured_on"]
    assert all(v > 0 for v in found["latency_ms"])
    for latency, speedup in zip(found["latency_ms"], found["speedup"], strict=True):
        assert speedup == pytest.approx(baseline["median_ms"] / latency)
    # A target no node carries: exit 2, one line naming the resource, nothing stored.
    assert found["missing_rc"] == 2, found["missing_stderr"][-2000:]
    lines = found["missing_stderr"].strip().splitlines()
    assert lines[-1].startswith("error: latency.target: no node of the Ray cluster carries")
    assert "'target_missing'" in lines[-1] and "Traceback" not in found["missing_stderr"]
    assert found["sweeps"] == ["timed"]
