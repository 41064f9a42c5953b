"""``sampler: layerwise`` where structured pruning couples layers (``Space.coupled``): a coupled
unit is structured whole, at one amount, or not at all (sweep/_layerwise_units.py)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from sweep import parse_config
from sweep._layerwise import LayerwiseSampler
from sweep._layerwise_units import choose, coupled_units, exchange, jitter, movers
from sweep._samplers import make_sampler
from sweep._space import METHOD_PREFIX, Space
from tests.sweep.synthetic_study import run_in_flight
from trials import Recipe
from trials.tasks.synthetic import SyntheticTask

TASK = SyntheticTask(n_layers=9, seed=4)
LAYERS = tuple(TASK.layer_names)
SIZES = {name: int(w) for name, w in zip(LAYERS, TASK.weights, strict=True)}
# A residual-like group (every third layer) and two pairs (attention-like q/k).
COUPLED = (("layer02", "layer05", "layer08"), ("layer00", "layer01"), ("layer03", "layer04"))
OBJECTIVES = {"accuracy": "max", "latency_ms": "min"}


def _space(coupled: tuple[tuple[str, ...], ...] = COUPLED, **search: object) -> Space:
    config = parse_config(
        {"name": "x", "task": "synthetic", "sampler": "layerwise", "search_space": search}
    )
    return Space(
        LAYERS,
        config.search_space,
        config.trial,
        {"layer07": "its output channels are the model's output"},
        layer_params=SIZES,
        model_params=sum(SIZES.values()),
        coupled=coupled,
    )


def _as_pruned(recipe: Recipe) -> Recipe:
    """What structured pruning does to ``recipe``: a coupled group loses the largest amount its
    structured members ask for, in every member (trials._structured_prune.group_amounts)."""
    data = recipe.to_dict()
    layers = data["layers"]
    for group in COUPLED:
        asked = [layers[n]["amount"] for n in group if layers[n]["method"] == "structured"]
        if asked:
            for name in group:
                layers[name] = {"amount": max(asked), "method": "structured"}
    return Recipe.from_dict(data)


def _units(space: Space) -> list[list[str]]:
    groups = list(dict.fromkeys(space.owners.values()))
    can = np.array([len(space.methods_of(g)) > 1 for g in groups])
    return [[groups[i] for i in unit] for unit in coupled_units(space, groups, can)]


def test_units_join_coupled_groups_through_ties_and_leave_out_unstructurable_layers() -> None:
    pairs_and_residual = [["layer00", "layer01"], ["layer02", "layer05", "layer08"]]
    assert _units(_space()) == [*pairs_and_residual, ["layer03", "layer04"]]
    # layer04 and layer05 share an amount: the residual-like group and the second pair join.
    tied = _space(tie=[["layer04", "layer05"]])
    assert _units(tied) == [["layer00", "layer01"], ["layer02", "layer03", "layer04", "layer08"]]
    # layer07 cannot lose channels: a group of it and one other layer is no unit.
    assert _units(_space(coupled=(("layer06", "layer07"),))) == []


def test_a_recipe_with_some_members_structured_is_read_as_pruning_applies_it() -> None:
    space = _space()
    sampler = LayerwiseSampler(space, seed=0)
    params = {f"amount:{name}": 0.1 for name in LAYERS}
    params |= {METHOD_PREFIX + name: "unstructured" for name in LAYERS if name != "layer07"}
    params |= {"amount:layer05": 0.6, METHOD_PREFIX + "layer05": "structured"}
    params |= {"amount:layer08": 0.3, METHOD_PREFIX + "layer08": "structured"}
    params |= {"order": "prune_ptq", "granularity": "per_channel"}
    amounts, structured, _ = sampler._codec.row(params)
    groups = sampler._codec.groups
    for name in ("layer02", "layer05", "layer08"):  # the whole group loses 0.6, structured
        assert (amounts[groups.index(name)], structured[groups.index(name)]) == (0.6, 1.0)
    assert (amounts[groups.index("layer01")], structured[groups.index("layer01")]) == (0.1, 0.0)


def test_the_allocation_structures_a_unit_whole_when_that_costs_less_in_all() -> None:
    # Two groups, options: 2 unstructured amounts then 2 structured ones.
    costs = np.array([[0.0, -1.0, 5.0, -3.0], [0.0, -1.0, 5.0, 0.5]])
    unit = [np.array([0, 1])]
    # Alone the first would take structured -3, the second unstructured -1; together
    # structured costs -2.5 against -2 unstructured: both structured at the second amount.
    assert choose(costs, [], 2).tolist() == [3, 1]
    assert choose(costs, unit, 2).tolist() == [3, 3]
    costs[1, 3] = 1.5  # now -1.5 together against -2 alone
    assert choose(costs, unit, 2).tolist() == [1, 1]
    costs[1, 3] = np.inf  # a member that cannot go there keeps the unit off it
    assert choose(costs, unit, 2).tolist() == [1, 1]


def test_local_moves_shift_a_structured_unit_whole() -> None:
    rng = np.random.default_rng(0)
    units = [np.array([0, 1, 2])]
    amounts = np.array([0.4, 0.4, 0.4, 0.2, 0.3])
    caps = np.full(5, 0.9)
    structured = np.array([1.0, 1.0, 1.0, 0.0, 0.0])
    moving = movers(units, structured, np.ones(5, dtype=bool))
    assert [m.tolist() for m in moving] == [[0, 1, 2], [3], [4]]
    unstructured = movers(units, np.zeros(5), np.array([True, True, True, True, False]))
    assert [m.tolist() for m in unstructured] == [[0], [1], [2], [3]]
    shares = np.array([0.1, 0.1, 0.1, 0.3, 0.4])
    for _ in range(50):
        moved = jitter(amounts, moving, caps, 0.0, 0.05, rng)
        assert len(set(moved[:3].tolist())) == 1
        swapped = exchange(amounts, moving, shares, caps, 0.0, 0.05, rng)
        if swapped is not None:
            assert len(set(swapped[:3].tolist())) == 1
            assert shares @ swapped >= shares @ amounts - 1e-9  # never less sparse


def _run(space: Space, seed: int, n_trials: int) -> list[Recipe]:
    config = parse_config(
        {
            "name": "x",
            "task": "synthetic",
            "sampler": "layerwise",
            "seed": seed,
            "objectives": OBJECTIVES,
            "budget": {"n_trials": n_trials},
        }
    )
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=make_sampler(config, space)
    )

    def values(recipe: Recipe) -> list[float]:
        metrics = TASK.analytic_metrics(_as_pruned(recipe))
        return [metrics[name] for name in OBJECTIVES]

    return run_in_flight(study, space, n_trials, 3, values)


@pytest.mark.parametrize("search", [{}, {"constraints": {"min_sparsity": 0.5}}])
def test_every_recipe_asked_structures_a_coupled_group_whole_or_not_at_all(
    search: dict[str, object],
) -> None:
    recipes = _run(_space(**search), seed=1, n_trials=60)
    structured_somewhere = 0
    for recipe in recipes:
        for group in COUPLED:
            specs = [recipe.layer(name) for name in group]
            methods = {spec.method for spec in specs}
            assert len(methods) == 1, (group, recipe)
            if methods == {"structured"}:
                structured_somewhere += 1
                assert len({spec.amount for spec in specs}) == 1, (group, recipe)
    assert structured_somewhere > 20  # the units are searched structured, not avoided
