"""Constraints kept by every sampler: ``search_space.constraints`` as a sparsity interval, a check
at launch that some recipe meets it, and a wrapper that moves any asked recipe into it.

Every constraint is linear in the layers' amounts: ``min_sparsity``, ``max_sparsity`` and
``max_params`` bound the share of the prunable weights that the amounts prune
(:meth:`Space.estimated_sparsity`, known before a trial runs). So the feasible recipes are those
whose estimated sparsity lies in one interval, and a recipe outside it is moved in by shifting
every layer's amount the same number of grid steps (the relative allocation kept, as far as the
layers' bounds allow).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FixedTrial, FrozenTrial, TrialState

from sweep._config import ConfigError
from sweep._space import AMOUNT_PREFIX, LEVEL_PARAM, OFFSET_PREFIX, Space
from trials import Recipe

_TOLERANCE = 1e-9


def sparsity_interval(space: Space) -> tuple[float, float] | None:
    """(lowest, highest) estimated sparsity a recipe may have, or None without a constraint."""
    limits = space.search.constraints
    if limits == type(limits)():
        return None
    weights = sum(space.layer_params.values())
    low = float(limits.min_sparsity or 0.0)
    if limits.max_params is not None:
        # pruned weights >= model params - max_params
        low = max(low, (space.model_params - limits.max_params) / max(1, weights))
    high = float(limits.max_sparsity if limits.max_sparsity is not None else 1.0)
    return low, high


def is_feasible(space: Space, recipe: Recipe) -> bool:
    return all(value <= _TOLERANCE for value in space.constraint_values(recipe).values())


def uniform_recipe(space: Space, level: float) -> Recipe:
    """Every searched layer at ``level`` (capped by its bound), the first order and granularity."""
    return space.suggest(FixedTrial(uniform_params(space, level)))


def uniform_params(space: Space, level: float) -> dict[str, Any]:
    """Optuna params of the uniform recipe at ``level``: order, granularity and methods first."""
    params: dict[str, Any] = {}
    for name, distribution in space.distributions().items():
        if name.startswith(OFFSET_PREFIX):
            params[name] = 0.0
        elif isinstance(distribution, FloatDistribution):  # the level, or a layer's amount
            params[name] = round(float(np.clip(level, distribution.low, distribution.high)), 6)
        else:
            params[name] = distribution.to_external_repr(0)
    return params


def amount_levels(space: Space) -> list[float]:
    """Every value of the amount grid, ascending."""
    low, high, step = space.base_grid()
    return [round(low + k * step, 6) for k in range(int(round((high - low) / step, 9)) + 1)]


def feasible_levels(space: Space) -> list[float]:
    """The grid levels whose uniform recipe meets the constraints (all of them without one)."""
    return [g for g in amount_levels(space) if is_feasible(space, uniform_recipe(space, g))]


def check_feasible(space: Space) -> None:
    """A config error, at launch, when no recipe of the space meets its constraints."""
    interval = sparsity_interval(space)
    if interval is None:
        return
    low, high = interval
    lowest, highest = (space.estimated_sparsity(uniform_recipe(space, g)) for g in (0.0, 1.0))
    limits = space.search.constraints
    if highest < low - _TOLERANCE:
        field = "min_sparsity" if limits.min_sparsity == low else "max_params"
        raise ConfigError(
            f"search_space.constraints.{field}: no recipe meets it: with every layer at its "
            f"highest amount (search_space.amount.max{', bounds_from' if space.upper else ''}) "
            f"a recipe prunes {highest:.1%} of the searched weights, it needs {low:.1%}; raise "
            f"search_space.amount.max or relax the constraint"
        )
    if lowest > high + _TOLERANCE:
        raise ConfigError(
            f"search_space.constraints.max_sparsity: no recipe meets it: with every layer at "
            f"search_space.amount.min a recipe prunes {lowest:.1%} of the searched weights; "
            "lower search_space.amount.min or raise max_sparsity"
        )


def _shifted(
    params: Mapping[str, Any], distributions: Mapping[str, BaseDistribution], direction: int
) -> dict[str, Any] | None:
    """``params`` one grid step up (direction 1) or down (-1): the level where there is one,
    else (or once the level is at its bound) every layer's amount or offset; None if nothing
    can move."""
    levels = [LEVEL_PARAM] if LEVEL_PARAM in params else []
    layers = [n for n in params if n.startswith((AMOUNT_PREFIX, OFFSET_PREFIX))]
    for names in (levels, layers):
        moved, changed = dict(params), False
        for name in names:
            distribution = distributions[name]
            if not isinstance(distribution, FloatDistribution) or distribution.step is None:
                continue
            value = params[name] + direction * distribution.step
            value = round(float(np.clip(value, distribution.low, distribution.high)), 6)
            if abs(value - params[name]) > _TOLERANCE:
                moved[name], changed = value, True
        if changed:
            return moved
    return None


def make_feasible(space: Space, params: Mapping[str, Any]) -> dict[str, Any] | None:
    """``params`` if its recipe meets the constraints, else the nearest uniform shift of its
    amounts that does, or None when no shift does."""
    interval = sparsity_interval(space)
    current = dict(params)
    if interval is None:
        return current
    distributions = space.distributions()
    low, high = interval
    for _ in range(4 * len(amount_levels(space)) + 4):
        recipe = space.suggest(FixedTrial(current))
        if is_feasible(space, recipe):
            return current
        sparsity = space.estimated_sparsity(recipe)
        direction = 1 if sparsity < low else -1 if sparsity > high else 0
        if direction == 0:  # inside the interval, yet infeasible: no shift will help
            return None
        moved = _shifted(current, distributions, direction)
        if moved is None:
            return None
        current = moved
    return None


@runtime_checkable
class WholeSampler(Protocol):
    """A sampler that draws every parameter of a trial at once, before the trial exists: the
    driver adds the trial whole (:func:`sweep._samplers.ask_recipe`) instead of suggesting its
    parameters one at a time through Optuna, each suggestion a copy of the trial and a check of
    its distribution against the study's (with ``tell``, 0.8-0.9 ms of CPU a trial at 26
    parameters, against 0.4 ms added whole)."""

    def next_params(self, study: optuna.Study) -> dict[str, Any] | None:
        """The next trial's parameters; None where the sampler cannot draw them now (trials
        enqueued and waiting): the driver then asks through ``study.ask``."""


class FeasibleSampler(BaseSampler):
    """Wraps a sampler so that every recipe it asks meets ``search_space.constraints``.

    The wrapped sampler draws every parameter (its relative ones, then the rest one by one, as
    Optuna would); a recipe outside the constraints is shifted into them (:func:`make_feasible`)
    before the trial sees it. Enqueued parameters are kept as they are: whoever enqueues (the
    warm-up, a resumed sweep) enqueues feasible recipes.
    """

    def __init__(self, inner: BaseSampler, space: Space) -> None:
        self._inner = inner
        self._space = space
        self._distributions = space.distributions()

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._distributions)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        fixed: dict[str, Any] = trial.system_attrs.get("fixed_params") or {}
        if not search_space or search_space.keys() <= fixed.keys():
            return {}
        # What the wrapped sampler's before_trial wrote (the grid sampler's point) is in the
        # storage, not yet in the trial Optuna hands over: read it as Optuna's own suggest does.
        trial = study._storage.get_trial(trial._trial_id)
        inner_space = self._inner.infer_relative_search_space(study, trial)
        drawn = dict(self._inner.sample_relative(study, trial, inner_space)) if inner_space else {}
        params: dict[str, Any] = {}
        for name, distribution in search_space.items():
            if name in fixed:
                params[name] = fixed[name]
            elif name in drawn:
                params[name] = drawn[name]
            else:
                params[name] = self._inner.sample_independent(study, trial, name, distribution)
        feasible = make_feasible(self._space, params) or params
        return {name: value for name, value in feasible.items() if name not in fixed}

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def next_params(self, study: optuna.Study) -> dict[str, Any] | None:
        """The wrapped sampler's ``next_params`` (:class:`WholeSampler`), moved into the
        constraints as :meth:`sample_relative` moves them; None where it has none."""
        if not isinstance(self._inner, WholeSampler):
            return None
        params = self._inner.next_params(study)
        return None if params is None else make_feasible(self._space, params) or params

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)


def constrained_choice(
    costs: np.ndarray,
    amounts: np.ndarray,
    shares: np.ndarray,
    interval: tuple[float, float],
    choose: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Per group (row), the option (column) of least total cost whose amounts' weighted sum
    (``shares``: each group's share of the searched weights) lies within ``interval``, by a
    Lagrange multiplier on the sparsity: exact for the additive costs the layerwise model has,
    up to the grid. Unreachable options have an infinite cost; where the interval cannot be
    met, the nearest sparsity the options reach is chosen. ``choose``: the options of least
    cost in a table of costs, where groups do not choose alone (the default: each row's least)."""

    def picks(multiplier: float) -> tuple[np.ndarray, float]:
        adjusted = costs - multiplier * shares[:, None] * amounts
        chosen = np.argmin(adjusted, axis=1) if choose is None else choose(adjusted)
        sparsity = float(np.sum(shares * amounts[np.arange(len(shares)), chosen]))
        return chosen, sparsity

    low, high = interval
    chosen, sparsity = picks(0.0)
    if low - _TOLERANCE <= sparsity <= high + _TOLERANCE:
        return chosen
    sign = 1.0 if sparsity < low else -1.0
    finite = costs[np.isfinite(costs)]
    scale = float(finite.max() - finite.min()) if finite.size else 1.0
    bound = max(scale, 1e-12) / max(float(shares.min(initial=1.0)), 1e-12) * 1e3
    lo_mult, hi_mult = 0.0, bound  # hi_mult: a multiplier that meets it (or the most there is)

    def meets(value: float) -> bool:
        return value >= low - _TOLERANCE if sign > 0 else value <= high + _TOLERANCE

    if not meets(picks(sign * hi_mult)[1]):
        return picks(sign * hi_mult)[0]
    for _ in range(60):
        middle = (lo_mult + hi_mult) / 2
        if meets(picks(sign * middle)[1]):
            hi_mult = middle
        else:
            lo_mult = middle
    return picks(sign * hi_mult)[0]


def feasible_where(space: Space) -> list[str]:
    """``--where`` terms on a trial's measured metrics that its constraints ask for: what the
    store keeps on a sweep's front (:data:`storage.FEASIBLE_KEY`)."""
    limits = space.search.constraints
    terms = []
    if limits.min_sparsity is not None:
        terms.append(f"sparsity >= {limits.min_sparsity!r}")
    if limits.max_sparsity is not None:
        terms.append(f"sparsity <= {limits.max_sparsity!r}")
    if limits.max_params is not None:
        terms.append(f"nonzero_params <= {limits.max_params!r}")
    return terms
