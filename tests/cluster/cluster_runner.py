"""Cluster tests run their scenario in a process of its own (one ``ray.init`` per process, and
a ``ray.cluster_utils.Cluster`` beside the session's local Ray) and ``report`` their result as
one marked JSON line: Ray's own processes write to the same stdout, also after it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULT_MARK = "scenario-result: "


def report(result: Any) -> None:
    """Print a scenario's result where ``run_scenario`` finds it among Ray's log lines."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def run_scenario(script: str, timeout: float) -> Any:
    """Run ``tests/cluster/SCRIPT`` from the repo root; return the result it ``report``-ed."""
    run = subprocess.run(
        [sys.executable, str(Path(__file__).with_name(script))],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = [line for line in run.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert len(results) == 1, run.stdout[-3000:]
    return json.loads(results[0].removeprefix(RESULT_MARK))
