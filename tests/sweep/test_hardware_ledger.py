"""The fp32 reference a sweep's speedups divide by: the middle of several timings per hardware
class, not the first one (which a loaded minute can double)."""

from __future__ import annotations

from sweep._hardware import FP32_LATENCY_KEY, REFERENCE_TIMINGS, HardwareLedger
from trials import LatencyStats, Reference


def test_a_class_reference_is_the_middle_of_its_first_timings() -> None:
    ledger = HardwareLedger(Reference(), None)
    timings = [LatencyStats(1.40, 1.30, 1.60), LatencyStats(2.76, 2.50, 3.10)]
    timings += [LatencyStats(1.36, 1.31, 1.50)]
    assert len(timings) == REFERENCE_TIMINGS
    for number, stats in enumerate(timings[:-1]):
        ledger.note(number, "cpu-a", stats)
        # Not enough yet: trials on the class go on timing fp32 beside their model.
        assert "cpu-a" not in ledger.reference.latencies
        assert ledger.config_updates() == {}
    ledger.note(2, "cpu-a", timings[-1])
    assert ledger.reference.latencies["cpu-a"] == timings[0]  # not the loaded 2.76 ms
    assert ledger.config_updates() == {FP32_LATENCY_KEY: {"cpu-a": [1.40, 1.30, 1.60]}}
    # Later timings (trials submitted before the reference was set) change nothing.
    ledger.note(3, "cpu-a", LatencyStats(9.0, 9.0, 9.0))
    assert ledger.reference.latencies["cpu-a"] == timings[0]
    assert ledger.config_updates() == {}


def test_classes_are_timed_apart_and_a_stored_reference_is_kept() -> None:
    stored = LatencyStats(5.0, 4.9, 5.2)
    ledger = HardwareLedger(Reference(latencies={"cpu-a": stored}), None, {"cpu-a"})
    ledger.note(0, "cpu-a", LatencyStats(1.0, 1.0, 1.0))  # a resumed sweep's class: known
    for number in range(REFERENCE_TIMINGS):
        ledger.note(number + 1, "cpu-b", LatencyStats(2.0 + number, 2.0, 4.0))
    assert ledger.reference.latencies == {"cpu-a": stored, "cpu-b": LatencyStats(3.0, 2.0, 4.0)}
    assert ledger.classes == {"cpu-a", "cpu-b"}
