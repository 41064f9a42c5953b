"""The Optuna sampler a sweep asks its trials from, built from the config and the search space."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import FixedTrial, FrozenTrial

from sweep._config import ConfigError, SweepConfig
from sweep._feasible import (
    FeasibleSampler,
    WholeSampler,
    amount_levels,
    feasible_levels,
    sparsity_interval,
)
from sweep._layerwise import LayerwiseSampler, spread_order
from sweep._space import AMOUNT_PREFIX, LEVEL_PARAM, OFFSET_PREFIX, Space
from trials import Recipe

# Random trials (uniform startup trials included) before TPE/GP model the front; chosen with
# uniform_startup 10 and amount.spread 0.2 from scripts/bench_search.py (README, Search quality).
DEFAULT_STARTUP_TRIALS = 20
# The warm-up (startup trials) takes at most 1/WARMUP_SHARE of the budget, unless configured.
WARMUP_SHARE = 3


class _Grid(optuna.samplers.GridSampler):
    """Optuna's grid sampler, minus its ``study.stop()`` on the last point: stop() works only
    inside ``study.optimize``, and the driver stops at its budget anyway."""

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


class _TPE(optuna.samplers.TPESampler):
    """Optuna's TPE, with each finished trial's parameters turned into TPE's internal form once
    instead of at every ask. Same samples, same seed; at 1,000 trials that conversion was a
    third of each ask (scripts/bench_overhead.py)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._rows: dict[tuple[tuple[str, BaseDistribution], ...], dict[int, list[float] | None]]
        self._rows = {}

    def _get_internal_repr(
        self,
        trials: list[FrozenTrial],
        search_space: dict[str, BaseDistribution],
        study: optuna.Study,
    ) -> dict[str, np.ndarray]:
        rows = self._rows.setdefault(tuple(search_space.items()), {})
        table: list[list[float]] = []
        for trial in trials:
            finished = trial.state.is_finished()  # a running trial's parameters may still grow
            if finished and trial._trial_id in rows:
                row = rows[trial._trial_id]
            else:
                params = self._get_params(trial, study)
                row = None
                if search_space.keys() <= params.keys():
                    row = [d.to_internal_repr(params[n]) for n, d in search_space.items()]
                if finished:
                    rows[trial._trial_id] = row
            if row is not None:
                table.append(row)
        columns = np.asarray(table, dtype=float).reshape(len(table), len(search_space))
        return {name: columns[:, i] for i, name in enumerate(search_space)}


def grid_values(space: Space) -> dict[str, list[object]]:
    """Every value of every parameter of ``space``: the grid that ``sampler: grid`` walks."""
    grid: dict[str, list[object]] = {}
    for name, distribution in space.distributions().items():
        if isinstance(distribution, CategoricalDistribution):
            grid[name] = list(distribution.choices)
        elif isinstance(distribution, FloatDistribution) and distribution.step is not None:
            count = round((distribution.high - distribution.low) / distribution.step) + 1
            values = np.linspace(distribution.low, distribution.high, count)
            grid[name] = [round(float(v), 6) for v in values]
        else:  # every parameter of a Space is categorical or stepped; a new kind must be added
            raise TypeError(f"grid sampler: no grid for parameter {name!r} ({distribution})")
    amounts = [name for name in grid if name == LEVEL_PARAM or name.startswith(AMOUNT_PREFIX)]
    if len(amounts) == 1 and not any(name.startswith(OFFSET_PREFIX) for name in grid):
        # One amount for every layer: its levels outside the constraints are no grid points.
        allowed = feasible_levels(space)
        grid[amounts[0]] = [value for value in grid[amounts[0]] if value in allowed]
    return grid


def grid_size(space: Space) -> int:
    return int(np.prod([len(values) for values in grid_values(space).values()]))


def enqueue_uniform(study: optuna.Study, space: Space, count: int) -> None:
    """Queue ``count`` uniform recipes (offsets 0) at levels spread evenly up to the top of the
    amount range, in :func:`spread_order`; the sampler draws their order, granularity and
    methods."""
    distributions = space.distributions()
    level = distributions.get("level")
    if count <= 0 or not isinstance(level, FloatDistribution) or level.step is None:
        return
    offsets = {name: 0.0 for name in distributions if name.startswith("offset:")}
    # Spread over the levels whose uniform recipe meets the constraints: from the last level
    # below them (the grid's minimum without constraints, itself never asked) to the top.
    allowed = feasible_levels(space)
    if not allowed:
        return
    below = [g for g in amount_levels(space) if g < allowed[0]]
    bottom = below[-1] if below else allowed[0]
    levels: list[float] = []
    for value in np.linspace(bottom, allowed[-1], count + 1)[1:]:
        snapped = round(float(level.low + round((value - level.low) / level.step) * level.step), 6)
        if snapped not in levels and snapped in allowed:  # a coarse grid has fewer levels
            levels.append(snapped)
    for index in spread_order(len(levels)):
        study.enqueue_trial({"level": levels[index], **offsets})


def set_constraints(trial: optuna.trial.Trial, space: Space, recipe: Recipe) -> None:
    """Set the recipe's constraint values on its trial, where the samplers read them."""
    for key, value in space.constraint_values(recipe).items():
        trial.set_constraint(key, value)


def constraint_attrs(space: Space, recipe: Recipe) -> dict[str, float]:
    """The recipe's constraint values as the system attributes of a trial built whole
    (``optuna.trial.create_trial``): where :meth:`optuna.trial.Trial.set_constraint` keeps them."""
    return {f"constraints:{key}": value for key, value in space.constraint_values(recipe).items()}


def ask_by_suggestion(study: optuna.Study, space: Space) -> tuple[int, Recipe]:
    """The next trial asked as Optuna asks (``study.ask``, then a suggestion per parameter):
    its number and its recipe, with the recipe's constraint values set."""
    trial = study.ask()
    recipe = space.suggest(trial)
    set_constraints(trial, space, recipe)
    return trial.number, recipe


def ask_recipe(study: optuna.Study, space: Space) -> tuple[int, Recipe]:
    """The next trial's number in ``study`` and its recipe, with the recipe's constraint values
    set. A sampler that draws a trial's parameters at once (:class:`WholeSampler`: layerwise)
    has the trial added whole, its parameters those the recipe was built from, as ``sweep
    resume`` adds the stored trials; any other is asked as Optuna asks
    (:func:`ask_by_suggestion`)."""
    sampler = study.sampler
    params = sampler.next_params(study) if isinstance(sampler, WholeSampler) else None
    if params is None:
        return ask_by_suggestion(study, space)
    drawn = FixedTrial(params)
    recipe = space.suggest(drawn)  # the parameters it drew, with their distributions
    number = len(study.get_trials(deepcopy=False))  # Optuna numbers a study's trials in turn
    # Equal distributions (every layer's amount, every layer's method) as one object each:
    # Optuna deep-copies the trial as it adds it and at each tell, copying a shared object once.
    shared: dict[BaseDistribution, BaseDistribution] = {}
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING,
            params=drawn.params,
            distributions={
                name: shared.setdefault(distribution, distribution)
                for name, distribution in drawn.distributions.items()
            },
            system_attrs=constraint_attrs(space, recipe),
        )
    )
    return number, recipe


def startup_trials(config: SweepConfig, space: Space) -> tuple[int, int]:
    """(uniform recipes first, trials before the sampler models the front): the config's, else
    defaults that fit the budget (:func:`wanted_startup`, cut to a third of the budget)."""
    settings = config.sampler_settings
    uniform, startup = wanted_startup(config, space)
    cap = max(1, config.budget.n_trials // WARMUP_SHARE)
    if settings.n_startup_trials is None:
        startup = min(startup, cap)
    if settings.uniform_startup is None:
        uniform = min(uniform, startup)
    return uniform, startup


def wanted_startup(config: SweepConfig, space: Space) -> tuple[int, int]:
    """The warm-up the sampler would like, whatever the budget: the config's, else the
    defaults. The layerwise model has a term per layer group: bigger models want more."""
    settings = config.sampler_settings
    uniform, startup = settings.uniform_startup, settings.n_startup_trials
    if config.sampler == "layerwise":
        groups = len(set(space.owners.values()))
        uniform = max(10, math.ceil(groups / 2) + 5) if uniform is None else uniform
        startup = uniform + 10 if startup is None else startup
    uniform = 10 if uniform is None else uniform
    startup = DEFAULT_STARTUP_TRIALS if startup is None else startup
    return uniform, startup


def budget_note(config: SweepConfig, space: Space) -> str | None:
    """One line when the budget is too small for the warm-up the model wants (it then gets a
    third of the budget): what it gets, what it wanted, and the budget that would do."""
    if config.sampler in ("random", "grid", "nsga2"):
        return None
    wanted = wanted_startup(config, space)[1]
    taken = startup_trials(config, space)[1]
    if taken >= wanted:
        return None
    groups = len(set(space.owners.values()))
    start = "its model starts thin"
    if config.sampler == "layerwise":  # its thin-budget mode (sweep/_layerwise_startup.py)
        start = "it asks uniform recipes over the whole grid for half the budget, then its model"
    return (
        f"budget.n_trials: {config.budget.n_trials} trials leave the warm-up {taken} (a third), "
        f"where {config.sampler} wants {wanted} for {groups} layer groups; {start}. For the full "
        f"warm-up give budget.n_trials {wanted * WARMUP_SHARE}, or tie layers (search_space.tie)"
    )


def make_sampler(config: SweepConfig, space: Space) -> optuna.samplers.BaseSampler:
    """The configured sampler; with ``search_space.constraints``, wrapped so that every recipe
    it asks meets them (:class:`FeasibleSampler`). The driver also sets each trial's constraint
    values (``Trial.set_constraint``), which TPE, NSGA-II and GP read; layerwise allocates
    within the constraints itself."""
    sampler = _make_sampler(config, space)
    return sampler if sparsity_interval(space) is None else FeasibleSampler(sampler, space)


# Metrics that the loaded model alone decides, whatever trained it (trials.deployed_form): the
# layerwise models give them one base per deployed form, not one per training order.
DEPLOYED_METRICS = frozenset(
    {"size_bytes", "compressed_bytes", "latency_ms", "params", "nonzero_params", "macs",
     "sparsity", "zero_fraction", "removed_fraction"}
)  # fmt: skip


def _accuracy_window(config: SweepConfig) -> dict[int, float]:
    """``sampler_settings.max_drop`` by the index of the objective it bounds: ``accuracy``
    (which ``SweepConfig`` requires, maximized, wherever ``max_drop`` is set)."""
    drop = config.sampler_settings.max_drop
    return {} if drop is None else {list(config.objectives).index("accuracy"): drop}


def _make_sampler(config: SweepConfig, space: Space) -> optuna.samplers.BaseSampler:
    seed = config.seed
    uniform, startup = startup_trials(config, space)
    if config.sampler == "layerwise":
        # The budget and the warm-up the model wants: where the budget cuts that warm-up short,
        # the sampler starts in its thin-budget mode (sweep/_layerwise_startup.py).
        return LayerwiseSampler(
            space,
            seed=seed,
            n_startup_trials=startup,
            uniform_startup=uniform,
            budget=config.budget.n_trials,
            wanted_startup=wanted_startup(config, space)[1],
            max_drop=_accuracy_window(config),
            deployed=[j for j, name in enumerate(config.objectives) if name in DEPLOYED_METRICS],
        )
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if config.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if config.sampler == "grid":
        size = grid_size(space)
        if size > 100_000:
            raise ConfigError(
                f"sampler: grid has {size} points; tie the layers (search_space.tie) or coarsen "
                "search_space.amount.step"
            )
        return _Grid(grid_values(space), seed=seed)  # type: ignore[arg-type]
    # constant_liar: trials in flight count as pessimistic guesses, so parallel asks spread out.
    return _TPE(seed=seed, multivariate=True, constant_liar=True, n_startup_trials=startup)
