"""A worker node dies mid-trial: Ray re-runs the trial elsewhere, it is recorded once, with its
attempt count."""

import pytest

from tests.cluster.cluster_runner import run_scenario


@pytest.mark.slow
def test_trial_on_a_dead_node_is_retried_and_recorded_once() -> None:
    trials = run_scenario("node_failure_run.py", timeout=420)
    assert [t["number"] for t in trials] == [0, 1, 2, 3]
    assert all(t["state"] == "COMPLETE" for t in trials), trials
    assert max(t["attempt"] for t in trials) >= 2, trials  # the killed trial ran again
