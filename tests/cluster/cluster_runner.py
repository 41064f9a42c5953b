"""Cluster tests run their scenario in a process of its own (one ``ray.init`` per process, and
a ``ray.cluster_utils.Cluster`` beside the session's local Ray), which prints JSON last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_scenario(script: str, timeout: float) -> Any:
    """Run ``tests/cluster/SCRIPT`` from the repo root; return the JSON of its last line."""
    run = subprocess.run(
        [sys.executable, str(Path(__file__).with_name(script))],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])
