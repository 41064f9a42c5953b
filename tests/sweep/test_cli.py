"""The command line as a user runs it: real subprocesses, a real local Ray, a real SQLite file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storage import Store
from trials import ORDERS

ROOT = Path(__file__).resolve().parents[2]
SWEEP = [sys.executable, "-m", "sweep"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*SWEEP, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _non_dominated(points: np.ndarray) -> set[int]:
    """Brute force: i is on the front unless some j is as good everywhere and better somewhere."""
    keep = set()
    for i in range(len(points)):
        dominated = any(
            np.all(points[j] <= points[i]) and np.any(points[j] < points[i])
            for j in range(len(points))
            if j != i
        )
        if not dominated:
            keep.add(i)
    return keep


@pytest.mark.slow
def test_launch_then_read_the_front_as_json(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "name: tiny\ntask: digits\nbudget: {n_trials: 6}\n"
        "trial: {finetune_epochs: 1, calibration_batches: 2, latency_repeats: 3}\n"
    )
    launched = _run("launch", str(config), "--storage", "sqlite:///tiny.db", cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "Pareto front of tiny" in launched.stdout
    assert "6 trials in" in launched.stderr

    listed = _run(
        "trials", "tiny", "--storage", "sqlite:///tiny.db", "--format", "json", cwd=tmp_path
    )
    assert listed.returncode == 0, listed.stderr
    trials = json.loads(listed.stdout)
    assert [t["number"] for t in trials] == list(range(6))

    shown = _run(
        "pareto", "tiny", "--storage", "sqlite:///tiny.db", "--format", "json", cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    front = json.loads(shown.stdout)
    assert front, "a sweep of complete trials has a non-empty front"
    for trial in front:
        assert trial["state"] == "COMPLETE"
        for key in ("number", "accuracy", "size_bytes", "latency_ms", "recipe"):
            assert trial[key] is not None, key
        assert trial["recipe"]["order"] in ORDERS
        for layer in trial["recipe"]["layers"].values():
            assert set(layer) == {"amount", "method", "granularity"}
    # The stored objectives (accuracy max, compressed_bytes min, latency_ms min) by brute force.
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    points = np.array([[-t["accuracy"], t["compressed_bytes"], t["latency_ms"]] for t in complete])
    expected = {complete[i]["number"] for i in _non_dominated(points)}
    assert {t["number"] for t in front} == expected

    status = _run("status", "--storage", "sqlite:///tiny.db", cwd=tmp_path)
    assert status.returncode == 0 and "tiny" in status.stdout and "FINISHED" in status.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\ntask: digits\nbudgt: {n_trials: 3}\n", "budgt: unknown field"),
        ("name: x\ntask: digits\nsearch_space: {amount: {max: -1}}\n", "search_space.amount.max"),
        ("name: x\ntask: no_such_pkg.mod:make\n", "task: cannot import 'no_such_pkg.mod'"),
        ("name: x\n", "task: required field is missing"),
        ("name: [x\n", "not valid YAML"),
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    result = _run("launch", str(config), "--storage", "sqlite:///bad.db", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad.db").exists()  # failed before touching the store or Ray


def test_unreadable_config_and_unknown_sweep(tmp_path: Path) -> None:
    missing = _run("launch", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and "cannot read the config file" in missing.stderr
    Store(f"sqlite:///{tmp_path / 'empty.db'}").close()  # a store with no sweeps
    unknown = _run("pareto", "ghost", "--storage", "sqlite:///empty.db", cwd=tmp_path)
    assert unknown.returncode == 2 and "ghost" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    nowhere = _run("pareto", "ghost", "--storage", "sqlite:///nowhere.db", cwd=tmp_path)
    assert nowhere.returncode == 2 and "no sweep store at nowhere.db" in nowhere.stderr
    assert not (tmp_path / "nowhere.db").exists()  # only launch creates a store


def test_usage_errors_are_one_line_and_help_still_works(tmp_path: Path) -> None:
    """click's own usage errors (a missing argument, a value out of range) are one `error:`
    line that points at the command's help, exit 2; --help prints the help, exit 0."""
    for args, expected in (
        (("launch",), "error: Missing argument 'CONFIG'; see sweep launch --help"),
        (("status", "--interval", "0"), "error: Invalid value for '--interval'"),
    ):
        result = _run(*args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    shown = _run("launch", "--help", cwd=tmp_path)
    assert shown.returncode == 0 and "Usage:" in shown.stdout and "--n-trials" in shown.stdout


@pytest.mark.slow
def test_a_launch_at_a_sparsity_constraint_scans_first_within_its_budget(tmp_path: Path) -> None:
    config = tmp_path / "dense.yaml"
    config.write_text(
        "name: dense\ntask: synthetic\ntask_settings: {n_layers: 4, seed: 3}\n"
        "objectives: {accuracy: max, compressed_bytes: min}\nbudget: {n_trials: 40}\n"
        "search_space: {constraints: {min_sparsity: 0.6}, amount: {max: 0.9, step: 0.1}}\n"
    )
    launched = _run("launch", str(config), "--storage", "sqlite:///d.db", cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    # Five amounts per layer would take 21 of 40 trials, over half: three (13 trials) it is.
    assert (
        "no sensitivity scan to seed a search at 60% sparsity: scanning 4 layers alone at "
        "0.4, 0.6, 0.9 first as dense-sensitivity (13 trials without fine-tuning, within the "
        "budget: the search gets 27)"
    ) in " ".join(launched.stderr.split())

    def listed(name: str) -> list[dict[str, object]]:
        shown = _run(
            "trials", name, "--storage", "sqlite:///d.db", "--format", "json", cwd=tmp_path
        )
        assert shown.returncode == 0, shown.stderr
        return list(json.loads(shown.stdout))

    assert len(listed("dense-sensitivity")) == 13
    trials = listed("dense")
    assert len(trials) == 27
    assert all(float(t["sparsity"]) >= 0.6 - 1e-9 for t in trials)  # type: ignore[arg-type]
    again = _run("launch", str(config), "--storage", "sqlite:///d.db", "--replace", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "no sensitivity scan" not in again.stderr  # the stored scan seeds it now
    assert len(listed("dense")) == 40
