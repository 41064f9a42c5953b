"""One sweep, one driver, on every backend: a live driver cannot be replaced or resumed, a stale
one can, and then every write of the old driver is refused in its own transaction."""

from __future__ import annotations

import threading
from datetime import timedelta

import pandas as pd
import pytest

from storage import Driver, DriverAliveError, FencedError, Store
from storage._models import SweepModel
from tests.storage.storage_helpers import make_record

STALE_S = 60.0


def _age(store: Store, name: str, seconds: float) -> None:
    """Make sweep ``name`` look unwritten for ``seconds`` (as a stopped driver's would be)."""
    with store._session(write=True) as session:
        row = SweepModel.find_by_name(session, name)
        assert row is not None
        row.updated_at = row.updated_at - timedelta(seconds=seconds)


def _rows(store: Store, name: str) -> pd.DataFrame:
    return store.trials(name)[["number", "state", "accuracy"]]


def test_a_live_driver_keeps_its_sweep(store_url: str) -> None:
    first, second = Store(store_url), Store(store_url)
    first.create_sweep("s", {}, {"accuracy": "max"}, driver=Driver(), stale_after_s=STALE_S)
    first.record_trials("s", [make_record(0, metrics={"accuracy": 0.5})])
    for attempt in (
        lambda: second.claim_sweep("s", Driver(), stale_after_s=STALE_S),
        lambda: second.create_sweep(
            "s", {}, {"accuracy": "max"}, replace=True, driver=Driver(), stale_after_s=STALE_S
        ),
        lambda: second.check_driver("s", stale_after_s=STALE_S, action="resume"),
    ):
        with pytest.raises(DriverAliveError, match=r"its driver is alive \(pid \d+ on .*s ago"):
            attempt()
    first.record_trials("s", [make_record(1, metrics={"accuracy": 0.6})])
    assert _rows(second, "s")["number"].tolist() == [0, 1]
    first.set_sweep_status("s", "FINISHED")  # a finished sweep has no live driver
    second.check_driver("s", stale_after_s=STALE_S, action="replace")


@pytest.mark.parametrize("takeover", ["resume", "replace"])
def test_a_stale_driver_is_fenced_once_taken_over(store_url: str, takeover: str) -> None:
    old, new = Store(store_url), Store(store_url)
    old.create_sweep("s", {}, {"accuracy": "max"}, driver=Driver(), stale_after_s=STALE_S)
    old.record_trials("s", [make_record(0, "RUNNING")])
    _age(old, "s", 2 * STALE_S)  # the old driver stopped writing: STALE
    if takeover == "resume":
        new.claim_sweep("s", Driver(), stale_after_s=STALE_S)
    else:
        new.create_sweep(
            "s", {}, {"accuracy": "max"}, replace=True, driver=Driver(), stale_after_s=STALE_S
        )
    before = _rows(new, "s")
    config_before = new.get_sweep("s").config
    taken = "was taken over by another driver" if takeover == "resume" else "was"
    for write in (
        lambda: old.record_trials("s", [make_record(0)]),
        lambda: old.set_sweep_status("s", "FINISHED"),
        lambda: old.update_sweep_config("s", {"budget": {"n_trials": 1}}),
        lambda: old.record_remeasured("s", {0: {"speedup": 2.0}}),
        lambda: old.save_artifacts("s", "onnxruntime", {0: b"x"}),
    ):
        with pytest.raises(FencedError, match=f"sweep 's' {taken}"):
            write()
    pd.testing.assert_frame_equal(_rows(new, "s"), before)
    info = new.get_sweep("s")
    assert (info.status, info.config) == ("RUNNING", config_before)
    new.record_trials("s", [make_record(5, metrics={"accuracy": 0.7})])


def test_two_takeovers_at_once_one_wins(fresh_url: str) -> None:
    """Both see the sweep STALE; the claim is one transaction, so exactly one owns it after."""
    Store(fresh_url).create_sweep("s", {}, {"accuracy": "max"}, driver=Driver())
    _age(Store(fresh_url), "s", 2 * STALE_S)
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        store = Store(fresh_url)
        barrier.wait()
        try:
            store.claim_sweep("s", Driver(), stale_after_s=STALE_S)
            outcomes.append("owner")
        except DriverAliveError:
            outcomes.append("refused")

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["owner", "refused", "refused", "refused"]
