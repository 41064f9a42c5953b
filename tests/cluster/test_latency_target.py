"""Latency measured on the target hardware: a node carrying a custom resource times every
int8 model, training runs elsewhere, and a missing target fails before any trial."""

import pytest

from tests.cluster.cluster_runner import run_scenario


@pytest.mark.slow
def test_latency_is_timed_on_the_target_node_and_training_elsewhere() -> None:
    found = run_scenario("latency_target_run.py", timeout=600)
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
    for latency, speedup in found["once"]:  # each trial's own timing, against the baseline
        assert speedup == pytest.approx(baseline["median_ms"] / latency)
    # The front was timed again at the end, on the target too: its figures carry an interval.
    intervals = list(
        zip(found["speedup_low"], found["speedup"], found["speedup_high"], strict=True)
    )
    assert any(low is not None for low, _, _ in intervals)
    for low, speedup, high in intervals:
        assert low is None or low <= speedup <= high
    # A target no node carries: exit 2, one line naming the resource, nothing stored.
    assert found["missing_rc"] == 2, found["missing_stderr"][-2000:]
    lines = found["missing_stderr"].strip().splitlines()
    assert lines[-1].startswith("error: latency.target: no node of the Ray cluster carries")
    assert "'target_missing'" in lines[-1] and "Traceback" not in found["missing_stderr"]
    assert found["threads_rc"] == 2, found["threads_stderr"][-2000:]
    last = found["threads_stderr"].strip().splitlines()[-1]
    assert last.startswith("error: latency.threads: 512 threads, but the target node"), last
    assert "set latency.threads to at most" in last
    assert "Traceback" not in found["threads_stderr"]
    assert found["sweeps"] == ["timed"]


@pytest.mark.slow
def test_a_slow_target_paces_training() -> None:
    """Back-pressure: with a target slower than training, trained models waiting for their
    timing stay within the bound (without it all 14 of this sweep's pile up: 13 seen)."""
    found = run_scenario("target_backpressure_run.py", timeout=600)
    assert found["states"] == ["COMPLETE"] * 14 and len(found["latency_nodes"]) == 1
    assert 2 <= found["max_waiting"] <= found["bound"], found
