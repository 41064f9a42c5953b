"""The built-in ``shapes`` (a trained procedural image task) and ``synthetic`` (analytic) tasks."""

import itertools
import operator
import random
import time
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from trials import (
    METHODS,
    ORDERS,
    AnalyticTask,
    LatencySpec,
    LayerSpec,
    Recipe,
    Task,
    load_task,
    prunable_layers,
    run_trial,
)
from trials._pruning import prune_model
from trials.tasks.shapes import ShapesTask, generate
from trials.tasks.synthetic import SyntheticTask

CPU = torch.device("cpu")
TRIAL_KEYS = {
    "accuracy",
    "fp32_accuracy",
    "accuracy_drop",
    "size_bytes",
    "compressed_bytes",
    "fp32_size_bytes",
    "fp32_compressed_bytes",
    "latency_ms",
    "fp32_latency_ms",
    "speedup",
    "sparsity",
    "params",
    "nonzero_params",
    "fp32_params",
    "macs",
}


# -- shapes ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread, as a Ray worker with one CPU has. On a busy 2-core machine, two
    threads made a training step of the shapes model 3-8x slower (spinning at every small op)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shapes() -> Task:
    return load_task("shapes")


@pytest.fixture(scope="session")
def shapes_model(shapes: Task) -> nn.Module:
    return shapes.build_model()  # trains the baseline once per session (~20-35 s on a CPU)


@pytest.fixture(scope="session")
def shapes_fp32_accuracy(shapes: Task, shapes_model: nn.Module) -> float:
    return shapes.evaluate(shapes_model, CPU)["accuracy"]


def test_shapes_data_is_deterministic_per_seed() -> None:
    x1, y1 = generate(96, seed=7)
    x2, y2 = generate(96, seed=7)
    x3, _ = generate(96, seed=8)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert x1.shape == (96, 1, 32, 32) and set(y1.tolist()) <= set(range(10))


def test_shapes_splits_are_disjoint_and_train_is_redrawn(shapes: Task) -> None:
    task = ShapesTask(n_train=256, n_calibration=128, n_validation=128)
    rows = {
        split: {x.numpy().tobytes() for x in tensor}
        for split, tensor in (("train", task.x_train), ("calib", task.x_calib), ("val", task.x_val))
    }
    assert [len(r) for r in rows.values()] == [256, 128, 128]
    for a, b in itertools.combinations(rows.values(), 2):
        assert not a & b
    first = torch.cat([x for x, _ in task.train_batches()])
    second = torch.cat([x for x, _ in task.train_batches()])
    assert torch.equal(first, task.x_train)  # the first call: the draw made at construction
    assert not torch.equal(first, second)
    assert {x.numpy().tobytes() for x in second}.isdisjoint(rows["val"])
    assert torch.equal(ShapesTask(n_train=64, n_validation=128).x_val, task.x_val)
    assert shapes.settings["seed"] == 0 and "n_train" in shapes.settings  # the cache key


def test_shapes_model_is_residual_depthwise_and_traceable(shapes: Task) -> None:
    assert isinstance(shapes, ShapesTask)
    model = shapes.create_model()
    layers = prunable_layers(model)
    modules = dict(model.named_modules())
    params = sum(p.numel() for p in model.parameters())
    assert 30_000 <= params <= 100_000
    assert 15 <= len(layers) <= 30
    depthwise = [
        n
        for n in layers
        if isinstance(modules[n], nn.Conv2d)
        and modules[n].groups == modules[n].in_channels == modules[n].out_channels > 1
    ]
    assert len(depthwise) >= 3
    graph = torch.fx.symbolic_trace(model).graph
    adds = [n for n in graph.nodes if n.op == "call_function" and n.target is operator.add]
    assert len(adds) >= 3  # identity adds of the inverted residual and plain residual blocks
    assert any(isinstance(m, nn.ReLU) for m in model.modules())


def test_shapes_baseline_accuracy_is_high_but_not_perfect(shapes_fp32_accuracy: float) -> None:
    assert 0.8 <= shapes_fp32_accuracy <= 0.99


def test_shapes_default_recipe_completes_in_int8(shapes: Task, shapes_fp32_accuracy: float) -> None:
    result = run_trial(shapes, Recipe(), latency=LatencySpec(repeats=3))
    assert result.state == "COMPLETE", result.error
    assert set(result.metrics) >= TRIAL_KEYS
    assert result.metrics["fp32_accuracy"] == pytest.approx(shapes_fp32_accuracy)
    # int8 within a few points of fp32 (one fine-tune epoch and PTQ move it; 3.0 points seen)
    assert abs(result.metrics["accuracy"] - shapes_fp32_accuracy) <= 0.04


def test_shapes_layers_differ_in_sensitivity(shapes: Task, shapes_model: nn.Module) -> None:
    """One layer at a time at 90% (unstructured, no fine-tuning): some layers barely notice,
    others break. This spread is what per-layer search exploits."""
    assert isinstance(shapes, ShapesTask)
    inputs, targets = shapes.x_val[:600], shapes.y_val[:600]  # enough for drops of 10+ points

    @torch.no_grad()
    def accuracy(model: nn.Module) -> float:
        return float((model.eval()(inputs).argmax(dim=1) == targets).float().mean())

    base = accuracy(shapes_model)
    drops = {}
    for name in prunable_layers(shapes_model):
        model = shapes.build_model()
        prune_model(model, Recipe(layers={name: LayerSpec(0.9)}))
        drops[name] = base - accuracy(model)
    assert min(drops.values()) <= 0.05, drops
    assert max(drops.values()) >= 0.4, drops
    assert max(drops.values()) - min(drops.values()) >= 0.35, drops
    assert sum(d <= 0.1 for d in drops.values()) >= 2, drops  # several tolerant layers


# -- synthetic -------------------------------------------------------------------------------------
GRID = [round(0.05 * i, 2) for i in range(20)]


@pytest.fixture(scope="module")
def synthetic() -> SyntheticTask:
    task = load_task("synthetic")
    assert isinstance(task, SyntheticTask)
    return task


def _random_recipe(task: SyntheticTask, rng: random.Random) -> Recipe:
    return Recipe(
        layers={n: LayerSpec(rng.choice(GRID)) for n in task.layer_names},
        order=rng.choice(["prune_ptq", "prune_qat"]),
        granularity=rng.choice(["per_tensor", "per_channel"]),
    )


def test_synthetic_loads_and_names_its_layers() -> None:
    task = load_task("synthetic", {"trial_seconds": 0.1, "n_layers": 5})
    assert isinstance(task, AnalyticTask) and isinstance(task, SyntheticTask)
    assert task.trial_seconds == 0.1
    assert prunable_layers(task.build_model()) == [f"layer{i:02d}" for i in range(5)]
    assert len(set(task.weights)) > 1  # layer sizes vary
    assert max(task.sensitivities) / min(task.sensitivities) >= 10


def test_synthetic_metrics_are_deterministic(synthetic: SyntheticTask) -> None:
    recipe = _random_recipe(synthetic, random.Random(0))
    again = SyntheticTask()
    assert synthetic.analytic_metrics(recipe) == again.analytic_metrics(recipe)
    assert SyntheticTask(seed=1).sensitivities != synthetic.sensitivities
    assert set(synthetic.analytic_metrics(recipe)) >= TRIAL_KEYS


def test_synthetic_accuracy_and_compressed_size_fall_with_amount(
    synthetic: SyntheticTask,
) -> None:
    for name in synthetic.layer_names:
        metrics = [
            synthetic.analytic_metrics(Recipe(layers={name: LayerSpec(a)})) for a in GRID[::3]
        ]
        for before, after in itertools.pairwise(metrics):
            assert after["accuracy"] < before["accuracy"], name
            assert after["compressed_bytes"] < before["compressed_bytes"], name
            assert after["latency_ms"] < before["latency_ms"], name
            assert after["size_bytes"] == before["size_bytes"]  # dense int8 does not shrink


def test_synthetic_granularity_and_order_trade_offs(synthetic: SyntheticTask) -> None:
    tensor = synthetic.analytic_metrics(Recipe(granularity="per_tensor"))
    channel = synthetic.analytic_metrics(Recipe(granularity="per_channel"))
    assert channel["size_bytes"] > tensor["size_bytes"]
    assert channel["compressed_bytes"] > tensor["compressed_bytes"]
    assert channel["accuracy"] > tensor["accuracy"]
    qat = synthetic.analytic_metrics(Recipe(order="prune_qat"))
    assert qat["accuracy"] > tensor["accuracy"]


@pytest.mark.skipif("structured" not in METHODS, reason="structured pruning not available")
def test_synthetic_structured_is_smaller_and_faster(synthetic: SyntheticTask) -> None:
    layers = synthetic.layer_names
    unstructured = synthetic.analytic_metrics(Recipe(layers={n: LayerSpec(0.5) for n in layers}))
    structured = synthetic.analytic_metrics(
        Recipe(layers={n: LayerSpec(0.5, "structured") for n in layers})
    )
    assert structured["latency_ms"] < unstructured["latency_ms"]
    assert structured["size_bytes"] < unstructured["size_bytes"]
    assert structured["macs"] < unstructured["macs"]
    assert structured["accuracy"] < unstructured["accuracy"]


def test_synthetic_trial_completes_and_lasts_trial_seconds() -> None:
    task = load_task("synthetic", {"trial_seconds": 0.1})
    recipe = Recipe(layers={"layer03": LayerSpec(0.6)})
    start = time.perf_counter()
    result = run_trial(task, recipe)
    elapsed = time.perf_counter() - start
    assert result.state == "COMPLETE", result.error
    assert 0.1 <= elapsed < 2.0
    assert result.timings["simulate_s"] >= 0.1
    assert set(result.metrics) >= TRIAL_KEYS
    assert isinstance(task, SyntheticTask)
    assert result.metrics == task.analytic_metrics(recipe)
    bad = run_trial(task, Recipe(layers={"layer99": LayerSpec(0.5)}))
    assert bad.state == "FAIL" and "layer99" in (bad.error or "")


def _dominates_weakly(a: dict[str, float], b: dict[str, float], objectives: dict[str, str]) -> bool:
    """``a`` is at least as good as ``b`` on every objective (with float slack)."""
    for key, direction in objectives.items():
        slack = 1e-9 * max(1.0, abs(b[key]))
        if direction == "max" and a[key] < b[key] - slack:
            return False
        if direction == "min" and a[key] > b[key] + slack:
            return False
    return True


def _front_2d(
    points: list[dict[str, float]], objectives: dict[str, str]
) -> list[tuple[float, float]]:
    """The non-dominated (first, second) objective values of ``points``, by sorting."""
    sign = {"max": -1.0, "min": 1.0}
    (k1, d1), (k2, d2) = objectives.items()
    pairs = sorted({(sign[d2] * p[k2], sign[d1] * p[k1]) for p in points})
    front, best = [], float("inf")
    for second, first in pairs:
        if first < best:
            front.append((round(first, 9), round(second, 6)))
            best = first
    return front


@pytest.mark.parametrize(
    "objectives",
    [
        {"accuracy": "max", "compressed_bytes": "min"},
        {"accuracy_drop": "min", "latency_ms": "min"},
    ],
)
def test_synthetic_true_front_dominates_random_recipes(
    synthetic: SyntheticTask, objectives: dict[str, str]
) -> None:
    front = synthetic.true_front(objectives)
    values = [p.metrics for p in front]
    assert len(front) > 50
    assert len(_front_2d(values, objectives)) == len(front)  # no point dominates another
    for point in front[:: max(1, len(front) // 50)]:
        assert point.metrics == synthetic.analytic_metrics(point.recipe)
    rng = random.Random(1)
    for _ in range(200):
        metrics = synthetic.analytic_metrics(_random_recipe(synthetic, rng))
        assert any(_dominates_weakly(v, metrics, objectives) for v in values), metrics


def test_synthetic_true_front_matches_brute_force() -> None:
    """On a space small enough to enumerate, the front is exactly the brute-force front."""
    task = SyntheticTask(n_layers=3, seed=3)
    amounts = [0.0, 0.3, 0.6, 0.9]
    grans = ["per_tensor", "per_channel", "none"]
    objectives = {"accuracy": "max", "compressed_bytes": "min"}
    everything = [
        task.analytic_metrics(
            Recipe(
                layers={
                    n: LayerSpec(a, granularity=g)
                    for n, a, g in zip(task.layer_names, combo[:3], combo[3:], strict=True)
                },
                order=order,
            )
        )
        for combo in itertools.product(amounts, amounts, amounts, grans, grans, grans)
        for order in ORDERS
    ]
    front = task.true_front(
        objectives, amounts=amounts, granularities=grans, per_layer_granularity=True
    )
    found = _front_2d([p.metrics for p in front], objectives)
    assert found == _front_2d(everything, objectives)
    assert len(found) == len(front) > 10


def test_synthetic_true_front_rejects_unsupported_objectives(synthetic: SyntheticTask) -> None:
    with pytest.raises(ValueError, match="two objectives"):
        synthetic.true_front({"accuracy": "max", "latency_ms": "min", "size_bytes": "min"})
    with pytest.raises(ValueError, match=r"objectives\.latency_ms"):
        synthetic.true_front({"accuracy": "max", "latency_ms": "max"})
