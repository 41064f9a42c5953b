"""A worker node dies mid-trial: Ray re-runs the trial elsewhere, it is recorded once, with its
attempt count."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_trial_on_a_dead_node_is_retried_and_recorded_once() -> None:
    run = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("node_failure_run.py"))],
        capture_output=True,
        text=True,
        timeout=420,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    trials = json.loads(run.stdout.strip().splitlines()[-1])
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    assert all(t["state"] == "COMPLETE" for t in trials), trials
    assert max(t["attempt"] for t in trials) >= 2, trials  # the killed trial ran again
