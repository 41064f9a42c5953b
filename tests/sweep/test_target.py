"""Latency-target pieces that need no cluster: per-node resource checks, one fp32 baseline per
hardware class, timing with the reference on a new class (models travel as their runtime's
model file), threads checked against the cores."""

from __future__ import annotations

import os
from typing import Any

import pytest
import ray
import torch
from torch import nn

from sweep import _remote, _resources
from sweep._config import ConfigError
from sweep._target import Target, _from_fields
from trials import LatencySpec, LatencyStats, hardware_class, reference_model, to_portable

LATENCY = LatencySpec(threads=1, warmup=1, repeats=3)


def test_resources_are_counted_per_node() -> None:
    two_small = [{"CPU": 2.0}, {"CPU": 2.0}]
    assert _resources.fitting({"CPU": 2.0}, two_small) == 2
    assert _resources.fitting({"CPU": 4.0}, two_small) == 0  # 4 in total, never on one node
    assert _resources._unmet({"CPU": 4.0}, two_small) == "CPU"
    apart = [{"CPU": 4.0}, {"CPU": 1.0, "target": 1.0}]
    assert _resources._unmet({"CPU": 1.0, "target": 1.0}, apart) is None
    assert _resources._unmet({"CPU": 2.0, "target": 1.0}, apart) == ""  # never together
    assert _resources.fitting({"CPU": 1.0, "GPU": 0.1}, [{"CPU": 16.0, "GPU": 1.0}]) == 10


def test_a_request_no_node_holds_names_the_field(local_ray: None) -> None:
    with pytest.raises(ConfigError) as error:
        _resources.require({"CPU": 1000.0}, wait_s=0)
    message = str(error.value)
    assert message.startswith("resources.cpus_per_trial: no node of the Ray cluster carries 'CPU'")
    assert "1000 wanted, at most 2 on one node" in message and "\n" not in message


def _measurement(cpu: str, median: float, reference: LatencyStats | None = None) -> Any:
    where = {
        "arch": "x86_64",
        "cpu": cpu,
        "torch": "2.13.0",
        "runtime": "onnxruntime 1.32.0",
        "backend": "onednn",
        "threads": "1",
    }
    return _remote.Measurement(
        LatencyStats(median, median, median), where, "n-" + cpu, 64, reference
    )


def test_each_hardware_class_gets_its_own_baseline() -> None:
    first = _measurement("A", 4.0)
    target = Target("t", None, None, {hardware_class(first.environment): first}, True)  # type: ignore[arg-type]
    assert target.baseline_for(_measurement("A", 1.0)) == (first, False)
    on_b = _measurement("B", 0.5, reference=LatencyStats(3.0, 2.9, 3.4))
    baseline, new = target.baseline_for(on_b)
    assert new and baseline.stats == LatencyStats(3.0, 2.9, 3.4) and baseline.node == "n-B"
    assert target.baseline_for(_measurement("B", 0.6)) == (baseline, False)
    with pytest.raises(RuntimeError, match="no fp32 baseline"):
        target.baseline_for(_measurement("C", 0.7))  # a new class must bring its reference
    stored = target.stored()
    assert stored["median_ms"] == 4.0 and stored["target"] == "t"  # the first, at the top
    assert {k: v["median_ms"] for k, v in stored["classes"].items()} == {
        hardware_class(first.environment): 4.0,
        hardware_class(on_b.environment): 3.0,
    }
    for fields in stored["classes"].values():  # what a resumed sweep reads back
        again = _from_fields(fields)
        assert hardware_class(again.environment) == fields["measured_on"]


def _portable_pair() -> tuple[bytes, bytes, torch.Tensor]:
    batch = torch.randn(8, 16)
    small, large = nn.Linear(16, 4).eval(), nn.Sequential(*(nn.Linear(16, 16) for _ in range(8)))
    return (
        to_portable(reference_model(small, batch)),
        to_portable(reference_model(large.eval(), batch)),
        batch,
    )


def test_a_new_class_times_the_reference_with_the_model(local_ray: None) -> None:
    model, reference, batch = _portable_pair()
    refs = [ray.put(reference)]
    timing = {"threads": 1, "batch_size": None, "warmup": 1, "repeats": 3}
    timed = _remote.measure(model, batch, timing, "onnxruntime", "onednn", refs, [])
    assert timed.reference is not None and timed.stats.median_ms > 0
    assert timed.batch == 8
    known = [hardware_class(timed.environment)]
    again = _remote.measure(model, batch, timing, "onnxruntime", "onednn", refs, known)
    assert again.reference is None  # its class has a baseline: the reference is not fetched


def test_more_threads_than_the_target_has_cores_is_a_config_error(local_ray: None) -> None:
    model, _, batch = _portable_pair()
    cores = len(os.sched_getaffinity(0))
    timing = {"threads": cores + 1, "batch_size": None, "warmup": 1, "repeats": 3}
    with pytest.raises(ConfigError, match=rf"^latency.threads: {cores + 1} threads, but"):
        _remote.measure(model, batch, timing, "onnxruntime", "onednn", [], [])
