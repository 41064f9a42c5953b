"""``sampler: layerwise`` models a structured amount by the share of channels (heads) it
removes, as the engine rounds them (``Space.removable``, ``Codec.effective``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import optuna
import pytest

from sweep import parse_config
from sweep._layerwise import LayerwiseSampler
from sweep._layerwise_model import Encoded
from sweep._layerwise_trust import TRUST, trust_region
from sweep._samplers import ask_recipe
from sweep._space import METHOD_PREFIX, Space
from tests.sweep.synthetic_study import add_finished
from trials import Removable
from trials.tasks.synthetic import SyntheticTask

TASK = SyntheticTask(n_layers=5, seed=1)
LAYERS = tuple(TASK.layer_names)
SIZES = {name: int(w) for name, w in zip(LAYERS, TASK.weights, strict=True)}
REMOVABLE = {
    "layer00": Removable(8),  # at round_to 4: none or half
    "layer01": Removable(64),
    "layer02": Removable(4, heads=True),
    "layer03": Removable(16),
}  # layer04: unknown (an analytic layer): modeled by its amount


def _sampler(**search: object) -> LayerwiseSampler:
    config = parse_config(
        {
            "name": "x",
            "task": "synthetic",
            "sampler": "layerwise",
            "search_space": search,
            "trial": {"round_to": 4},
        }
    )
    space = Space(
        LAYERS,
        config.search_space,
        config.trial,
        layer_params=SIZES,
        model_params=sum(SIZES.values()),
        removable=REMOVABLE,
    )
    return LayerwiseSampler(space, seed=0)


def _params(amounts: dict[str, float], structured: set[str]) -> dict[str, object]:
    params: dict[str, object] = {"order": "prune_ptq", "granularity": "per_channel"}
    for name in LAYERS:
        params[f"amount:{name}"] = amounts.get(name, 0.0)
        params[METHOD_PREFIX + name] = "structured" if name in structured else "unstructured"
    return params


@pytest.mark.parametrize(
    ("amount", "removed"),
    [(0.1, {"layer00": 0.0, "layer01": 0.0625, "layer02": 0.0, "layer03": 0.0}),
     (0.3, {"layer00": 0.0, "layer01": 0.3125, "layer02": 0.25, "layer03": 0.25}),
     (0.4, {"layer00": 0.5, "layer01": 0.375, "layer02": 0.5, "layer03": 0.25})],
)  # fmt: skip
def test_structured_amounts_are_modeled_by_the_share_they_remove(
    amount: float, removed: dict[str, float]
) -> None:
    sampler = _sampler()
    codec = sampler._codec
    row = codec.row(_params(dict.fromkeys(LAYERS, amount), set(LAYERS)))
    effective = codec.effective(Encoded.of([row], len(LAYERS)))
    shares = dict(zip(codec.groups, effective.amounts[0], strict=True))
    assert shares == pytest.approx({**removed, "layer04": amount})
    # Unstructured layers lose their amount of weights, whatever their channels.
    loose = codec.row(_params(dict.fromkeys(LAYERS, amount), set()))
    assert np.allclose(codec.effective(Encoded.of([loose], len(LAYERS))).amounts, amount)


def test_an_amount_off_the_grid_and_a_tied_group_are_modeled_too() -> None:
    sampler = _sampler(tie=[["layer00", "layer01"]])
    codec = sampler._codec
    params = _params({"layer00": 0.43, "layer03": 0.33}, {"layer00", "layer01", "layer03"})
    del params["amount:layer01"]  # tied: layer00's amount is the group's
    effective = codec.effective(Encoded.of([codec.row(params)], len(codec.groups)))
    shares = dict(zip(codec.groups, effective.amounts[0], strict=True))
    # The tied group: its members' removed shares weighted by their weights.
    weights = np.array([SIZES["layer00"], SIZES["layer01"]], dtype=float)
    expected = weights @ [0.5, 1 - 36 / 64] / weights.sum()  # 64 - round(27.52) = 36 kept
    assert shares["layer00"] == pytest.approx(expected)
    assert shares["layer03"] == pytest.approx(0.25)  # 16 - round(5.28) = 11, rounded to 12


def _study_of(
    sampler: LayerwiseSampler, levels: list[float], accuracy: Callable[[float], float]
) -> tuple[optuna.Study, np.ndarray]:
    """A study of 40 unstructured trials, each layer at one of ``levels`` at random, scored by
    the share of the weights they remove (accuracy: ``accuracy(removed)``; size: what is left);
    and those shares."""
    rng = np.random.default_rng(3)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    removed = []
    for _ in range(40):
        amounts = dict(zip(LAYERS, rng.choice(levels, size=5), strict=True))
        removed.append(float(sampler._shares @ [amounts[name] for name in LAYERS]))
        params = _params(amounts, set())
        add_finished(
            study,
            sampler._space,
            params,
            [accuracy(removed[-1]) + rng.normal(0, 1e-3), 1000.0 * (1 - removed[-1])],
        )
    return study, np.array(removed)


def _asked(sampler: LayerwiseSampler, study: optuna.Study, count: int = 20) -> list[float]:
    """The share of the weights each of ``count`` asks removes (structured: as the channels)."""
    asked = []
    for _ in range(count):
        trial, recipe = ask_recipe(study, sampler._space)
        row = sampler._codec.row(sampler._space.params_of(recipe))
        asked.append(
            float(sampler._shares @ sampler._codec.effective(Encoded.of([row], 5)).amounts[0])
        )
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return asked


def test_no_proposal_removes_more_of_the_weights_than_the_better_trials_did_and_a_step() -> None:
    """Each layer's trust region comes from its own trials: all layers at their highest at once
    collapsed ``resnet``'s accuracy. Here every layer reached 0.3 in some trial, but none
    removed more than about a quarter of the weights, and the model (size falls with every
    amount, accuracy not at all) would put every layer at its reach."""
    sampler = _sampler()
    study, removed = _study_of(sampler, [0.0, 0.05, 0.1, 0.3], lambda _: 0.9)
    ceiling = removed.max() + TRUST * sampler._step
    asked = _asked(sampler, study)
    # A quarter of the asks are jittered after the allocation: one or two layers up to two steps.
    assert float(np.median(asked)) <= ceiling + 1e-9
    assert max(asked) <= ceiling + 2 * 2 * sampler._step * float(
        np.sort(sampler._shares)[-2:].sum()
    )
    # Without the bound, most asks removed 0.36-0.38 (every layer at its reach, 0.4, would
    # remove 0.4); with it, it still goes past the trials.
    assert removed.max() < 0.3 and float(np.median(asked)) > removed.max()


def test_nor_as_much_as_the_trials_that_collapsed_the_accuracy() -> None:
    """Past a third of the weights, the accuracy falls to chance: the asks stay below what
    nearly all the collapsed trials removed, though better trials went a step further (the
    collapse model, fitted on them, learns the shared slope)."""
    sampler = _sampler()
    study, removed = _study_of(
        sampler, [0.0, 0.1, 0.3, 0.5, 0.7], lambda r: 0.9 if r < 0.35 else 0.1
    )
    fell = removed >= 0.35
    assert 5 <= fell.sum() <= 20
    asked = _asked(sampler, study)
    assert float(np.median(asked)) <= float(np.quantile(removed[fell], 0.1)) + 1e-9


def test_proposals_leave_the_layer_that_collapses_the_accuracy_and_prune_the_others() -> None:
    """One layer of five collapses the accuracy past 0.35; the others may lose most of their
    weights. A bound on the weights removed in all (below what the collapsed trials removed)
    kept every layer low (a median of 0.35 over the others); the per-layer model of collapse
    keeps that one low and prunes the others past it."""
    sampler = _sampler()
    rng = np.random.default_rng(3)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    sensitive = LAYERS.index("layer03")
    for _ in range(60):
        levels = rng.choice([0.0, 0.1, 0.3, 0.5, 0.7], size=5)
        removed = float(sampler._shares @ levels)
        fell = levels[sensitive] > 0.35
        params = _params(dict(zip(LAYERS, levels, strict=True)), set())
        accuracy = (0.1 if fell else 0.9) + rng.normal(0, 1e-3)
        add_finished(study, sampler._space, params, [accuracy, 1000.0 * (1 - removed)])
    asked = []
    for _ in range(20):
        before = len(study.trials)
        _asked(sampler, study, count=1)
        asked.append(study.trials[before].params)
    mine = np.array([p[f"amount:{LAYERS[sensitive]}"] for p in asked])
    others = np.array([[p[f"amount:{n}"] for n in LAYERS if n != LAYERS[sensitive]] for p in asked])
    assert float(np.mean(mine <= 0.35)) >= 0.8
    assert float(np.median(others.mean(axis=1))) >= 0.45


def test_until_the_collapse_model_is_fitted_the_bound_is_on_the_weights_removed_in_all() -> None:
    """Two collapsed trials are too few for the collapse model: the bound is the better trials'
    most removed plus two steps, and below nine in ten of what the collapsed ones removed."""
    amounts = np.array([[0.1, 0.1], [0.2, 0.2], [0.3, 0.1], [0.3, 0.2], [0.8, 0.4]])
    shares = np.array([0.5, 0.5])
    better = np.array([True, True, True, False, False])
    fell = np.array([False, False, False, True, True])
    trust = trust_region(amounts, better, fell, shares, 0.05)
    assert trust.collapse is None
    np.testing.assert_allclose(trust.reach, [0.4, 0.3])
    # The collapsed trials removed 0.25 and 0.6: their 10th percentile, under 0.2 + two steps.
    assert trust.removed == pytest.approx(0.25 + 0.1 * (0.6 - 0.25))
    trust = trust_region(amounts, better, np.zeros(5, dtype=bool), shares, 0.05)
    assert trust.removed == pytest.approx(0.2 + 2 * 0.05)
