"""The trained-baseline cache: reused once written, and only a time saver when it cannot be."""

from pathlib import Path

import pytest
from torch import nn

from trials import load_task, reporting_phases
from trials._task import cached_state_dict


def test_a_baseline_is_trained_once_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(tmp_path))
    calls: list[int] = []

    def train() -> nn.Module:
        calls.append(1)
        return nn.Linear(3, 2)

    first = cached_state_dict({"task": "t", "seed": 1}, train)
    again = cached_state_dict({"task": "t", "seed": 1}, train)
    assert len(calls) == 1 and all((first[k] == again[k]).all() for k in first)
    assert [p.suffix for p in tmp_path.iterdir()] == [".pt"]  # no temporary file left


def test_a_cache_that_cannot_be_written_warns_and_trains_anyway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(blocked))
    with pytest.warns(RuntimeWarning, match="could not cache the trained baseline"):
        state = cached_state_dict({"task": "t"}, lambda: nn.Linear(3, 2))
    assert set(state) == {"weight", "bias"}


def test_training_a_baseline_reports_its_epochs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `sweep launch` shows while the baseline trains (minutes on a real model)."""
    monkeypatch.setenv("SWEEP_CACHE_DIR", str(tmp_path))
    task = load_task("examples/user_task.py:make_task", {"seed": 7})
    phases: list[str] = []
    with reporting_phases(phases.append):
        task.build_model()
        trained = len(phases)
        load_task("examples/user_task.py:make_task", {"seed": 7}).build_model()  # cached now
    assert phases[0] == "training the fp32 baseline of spirals (once: cached for next time)"
    assert phases[1] == (
        "training the fp32 baseline of spirals: epoch 1 of at most 80 (once: cached for next time)"
    )
    assert len(phases) == trained > 2  # the cached baseline reports nothing
