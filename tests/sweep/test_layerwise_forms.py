"""``layerwise`` gives size and latency one base per deployed form (``trials.deployed_form``):
``prune_ptq`` and ``prune_qat`` load as the same graph."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from sweep._layerwise import LayerwiseSampler
from sweep._layerwise_model import Encoded, Fit, Sample
from sweep._samplers import ask_recipe
from tests.sweep.synthetic_study import (
    add_finished,
    layerwise_sampler,
    synthetic_study,
    unstructured_params,
)
from trials import RecipeError, deployed_form
from trials.tasks.synthetic import SyntheticTask

TASK = SyntheticTask(n_layers=5, seed=1)
LAYERS = tuple(TASK.layer_names)


def test_ptq_and_qat_deploy_alike_and_float_whatever_its_granularity() -> None:
    assert deployed_form("prune_ptq", "per_tensor") == deployed_form("prune_qat", "per_tensor")
    assert deployed_form("prune_ptq", "per_tensor") != deployed_form("prune_qat", "per_channel")
    assert deployed_form("prune_dynamic", "per_channel") != deployed_form(
        "prune_ptq", "per_channel"
    )
    assert deployed_form("prune_float", "per_tensor") == deployed_form("prune_float", "per_channel")
    with pytest.raises(RecipeError, match="order: 'prune'"):
        deployed_form("prune", "per_tensor")


def _ptq_share(deployed: tuple[int, ...]) -> tuple[float, dict[tuple[str, str], float]]:
    """60 trials whose size falls with the weights pruned alike for both int8 orders, and
    ``prune_ptq`` 6 points less accurate at any amount; its trials pruned more (as a sweep's
    may, by chance). Returns the share of 20 asks that take ``prune_ptq``, and the size bases
    per (order, granularity) of the last fit."""
    sampler = layerwise_sampler(TASK, {"orders": ["prune_ptq", "prune_qat"]}, deployed=deployed)
    rng = np.random.default_rng(0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for _ in range(60):
        ptq = bool(rng.random() < 0.5)
        levels = rng.choice([0.0, 0.1, 0.3, 0.5, 0.7], size=5) + (0.2 if ptq else 0.0)
        removed = float(sampler._shares @ levels)
        accuracy = 0.9 - 0.06 * ptq - 0.1 * removed**2 + rng.normal(0, 2e-3)
        size = 1000.0 * (1 - 0.9 * removed) + rng.normal(0, 20)
        order = "prune_ptq" if ptq else "prune_qat"
        granularity = str(rng.choice(["per_tensor", "per_channel"]))
        params = unstructured_params(dict(zip(LAYERS, levels, strict=True)), order, granularity)
        add_finished(study, sampler._space, params, [accuracy, size])
    orders = []
    for _ in range(20):
        trial, recipe = ask_recipe(study, sampler._space)
        orders.append(recipe.order)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    assert sampler._fitted is not None
    codec = sampler._codec
    combos = [(o, g) for o in codec.orders for g in codec.granularities]
    bases = dict(zip(combos, sampler._fitted[1][2][1], strict=True))
    return float(np.mean(np.array(orders) == "prune_ptq")), bases


def test_the_order_that_loses_accuracy_is_not_asked_for_a_size_it_does_not_have() -> None:
    share, bases = _ptq_share(deployed=(1,))
    for granularity in ("per_tensor", "per_channel"):
        assert bases["prune_ptq", granularity] == bases["prune_qat", granularity]
    assert share <= 0.1, (share, bases)


def test_an_order_absent_from_the_better_trials_is_based_on_its_own_trials() -> None:
    """Fitted on the better trials, the accuracy model gave an order none of them ran the best
    base (0): worse for it, the order was asked again and again. Its base now comes from its own
    trials within the amounts the fit saw: past them the model's costs overshoot a drop that
    stops at chance, and made the base negative."""
    encoded = Encoded(
        amounts=np.array([[0.1], [0.2], [0.1], [0.9], [0.8], [0.6]]),
        structured=np.zeros((6, 1)),
        combo=np.array([0, 0, 1, 1, 3, 3]),  # combo 2: never run
    )
    fit = Fit(base=np.zeros(4), weight=np.array([0.5]), structured_slope=np.zeros(1))
    # Combo 1: 0.25 worse at any amount, and collapsed (0.35: chance) at 0.9. Combo 3: only
    # past the fitted amounts (0.2 at most): its least pruned trial.
    drop = np.array([0.05, 0.10, 0.30, 0.35, 0.50, 0.45])
    better = Sample.of(np.array([0, 1]))
    filled = fit.with_unseen_bases(encoded, drop, better, np.min)
    assert filled.base.tolist() == pytest.approx([0.0, 0.25, 0.0, 0.15])


def test_the_sweeps_size_and_latency_objectives_are_modeled_by_deployed_form() -> None:
    objectives = {"accuracy": "max", "compressed_bytes": "min", "latency_ms": "min", "f1": "max"}
    study, _ = synthetic_study(TASK, sampler="layerwise", objectives=objectives)
    assert isinstance(study.sampler, LayerwiseSampler)
    assert study.sampler._models._deployed == {1, 2}  # not accuracy, nor a task's own metric
