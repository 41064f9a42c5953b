"""``sampler: layerwise``: a per-layer model of every objective, and recipes allocated from it.

The working assumption of sensitivity-based compression (Distiller's and NNI's sensitivity
analysis, the baselines of AMC and HAQ): near the useful part of the front, a recipe's accuracy
drop is about the sum of what each layer's amount costs, a convex cost; its size and latency fall
about linearly with each layer's amount. The sampler fits that model to the finished trials and
asks for the recipe that is best under it for a randomly weighted trade-off between the
objectives: the model is additive, so that recipe is found layer by layer, exactly, over the
amount grid. Successive asks, with fresh weights and a bootstrap resample of the trials each time
(Thompson-style exploration), trace the front.

Model, for objective ``j`` in its minimized form, over layer groups ``l`` (tied layers are one):

- objectives maximized (accuracy-like): ``b_j[order, granularity] + sum_l w_jl * (k_j(m_l) *
  a_l) ** g_j``, with ``w >= 0``, ``k = 1`` for unstructured and a fitted ``k >= 1`` for
  structured pruning, and ``g`` from a small grid; fitted by non-negative least squares on the
  better half of the trials (far from the front accuracy saturates at chance level, which no
  additive model fits; where over half the trials tie there, on those above it); in deep
  models, where fitting every (``g``, ``k``) at every ask is too slow, the pair is kept from ask
  to ask and compared with a few others at each (:class:`sweep._layerwise_model.ShapeSearch`);
- objectives minimized (size, latency, ...): ``b_j[order, granularity] + sum_l c_jl(m_l) * a_l``,
  each slope a pooled part shared by all groups plus the group's own deviation, shrunk by a
  ridge that leave-one-out cross-validation chooses (:mod:`sweep._layerwise_linear`). A
  structured amount enters every model as the share of the group's channels (heads) it removes,
  as the engine rounds them (:meth:`sweep._layerwise_model.Codec.effective`).

Layers that structured pruning couples (``Space.coupled``: an attention module's q/k/v, the
layers added into one residual stream) lose channels together, by the largest amount among them:
the model and the proposals treat such layers as one unit, structured whole at one amount or not
at all (:mod:`sweep._layerwise_units`). Modeled per layer, a Transformer's 8 residual layers put
the whole stream's loss on whichever asked most, and the sampler kept asking recipes that
collapsed the accuracy to chance (most of its trials on ``transformer``, where it lost to
``tpe``).

Proposals stay in a trust region: no layer more than ``TRUST`` grid steps above its highest
amount among the better half of the trials, where the model was fitted; and, since each layer's
highest came from its own trials and all at once collapsed the accuracy to chance (the
sampler's proposals on ``resnet`` removed 64-84% of the weights, a third of them collapsed),
within a model of that collapse: a logistic regression on the same per-layer terms, whose
log-odds the allocation keeps below a ``COLLAPSE_RISK`` chance (:mod:`sweep._layerwise_collapse`;
until a few trials collapsed and a few held, no more of all the weights removed than the better
trials removed, plus as much, nor than nine in ten of the collapsed ones). A proposal predicted
to be worse than the better half in an accuracy-like objective, or below ``max_drop``, is not
asked (the next draw is). See :mod:`sweep._layerwise_trust`; the models are fitted in
:mod:`sweep._layerwise_fit`, size and latency with a base per deployed form.

Before ``n_startup_trials`` trials have finished, it asks uniform recipes at evenly spaced levels
(``uniform_startup`` of them), then the same levels with each layer moved at random by up to
0.15: the trials from which each layer's effect can be told apart. Where the budget cannot cover
that warm-up (it gets at most a third of the budget: a deep model at a few dozen trials), it asks
uniform recipes spread over the whole grid (level x order x granularity x method) for half the
budget instead, then the model and uniform neighbours of the front by turns (thin mode,
:mod:`sweep._layerwise_startup`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from sweep._feasible import feasible_levels, is_feasible, sparsity_interval
from sweep._layerwise_fit import Fitted, Models
from sweep._layerwise_history import Asked, History, recipe_key
from sweep._layerwise_model import (
    Codec,
    Encoded,
    Row,
    one_blas_thread,
)
from sweep._layerwise_options import Options
from sweep._layerwise_startup import ThinStart, is_thin, spread_order
from sweep._layerwise_trust import Trust
from sweep._layerwise_units import exchange, jitter, movers
from sweep._space import AMOUNT_PREFIX, Space

STARTUP_NOISE = 0.15  # how far startup trials move each layer from their uniform level
PROPOSALS = 16  # weight draws tried before a recipe not asked before is found
JITTER = 0.25  # chance that a proposal moves one or two layers by one or two grid steps
EXCHANGE = 0.5  # under constraints, chance that an ask is a local exchange move instead
# The model is fitted again once the modeled trials have grown by this share (at least one): a
# fit on 1,000 trials learns little from the 1,001st, and fitting at every completion cost a
# driver at hundreds of completions a second most of its time (issue 18). Each fit is a fresh
# bootstrap; asks between fits differ by their trade-off weights, as asks in a burst always did.
REFIT_GROWTH = 0.01
# Nor before an eighth of the trials running has finished: an ask with R trials running already
# misses R results, and a fit held back for R / 8 more adds an eighth to that lag. At R = 32 it
# is fitted every 4 results instead of at each: the fits' CPU per trial fell by a fifth (they
# were a driver's largest cost at hundreds of completions a second), and over 9 seeds
# of ``synthetic`` at 32 in flight its hypervolume moved by -0.5% to +0.6%, +0.1% on average
# (fitted every 8 results: lower in 8 of 9, -0.3%). A driver with a few slots (R < 16) fits as
# before.
REFIT_RUNNING = 8


def refit_lag(fitted: int, running: int) -> int:
    """New modeled trials before the model is fitted again, last fitted on ``fitted`` of them
    with ``running`` trials running now (see ``REFIT_GROWTH``, ``REFIT_RUNNING``)."""
    return max(1, math.ceil(REFIT_GROWTH * fitted), running // REFIT_RUNNING)


class LayerwiseSampler(BaseSampler):
    """See the module docstring. Parameters are those of ``space`` in ``amount_mode:
    independent``; constraints (``search_space.constraints``) are respected where a feasible
    proposal exists.

    ``budget`` (the sweep's ``budget.n_trials``) and ``wanted_startup`` (the warm-up the model
    would like, ``sweep._samplers.wanted_startup``): given both, and a ``n_startup_trials`` (the
    warm-up the budget leaves) short of the wanted one, the sampler starts in thin mode, since a
    model fitted on that few trials did worse than uniform recipes (issue 17). Without them it
    always starts with ``n_startup_trials`` of warm-up.

    ``max_drop``: by objective index (an accuracy-like one), how far below the best trial a
    proposal may be predicted to score (``sampler_settings.max_drop``); without it, as far as
    the better half of the trials spreads.

    ``deployed``: the indices of the objectives that the loaded model alone decides (its size,
    its latency), modeled with a base per deployed form (:mod:`sweep._layerwise_fit`)."""

    def __init__(
        self,
        space: Space,
        *,
        seed: int | None = None,
        n_startup_trials: int = 20,
        uniform_startup: int = 10,
        budget: int | None = None,
        wanted_startup: int | None = None,
        max_drop: Mapping[int, float] | None = None,
        deployed: Collection[int] = (),
    ) -> None:
        self._space = space
        self._rng = np.random.default_rng(seed)
        self._random = RandomSampler(seed=seed)
        self._n_startup = n_startup_trials
        self._n_uniform = max(1, min(uniform_startup, n_startup_trials))
        self._distributions = space.distributions()
        self._groups = list(dict.fromkeys(space.owners.values()))
        self._codec = Codec(space)
        self._grid, self._step = self._codec.grid, self._codec.step
        # Uniform levels: evenly spaced above the grid's minimum, or over the levels whose
        # uniform recipe meets the constraints.
        allowed = feasible_levels(space)
        feasible = np.flatnonzero(np.isin(self._grid, allowed))
        first = 1 if len(self._grid) > 1 and feasible.size and feasible[0] == 0 else 0
        candidates = feasible[first:] if feasible.size > first else np.arange(len(self._grid))
        picks = np.linspace(0, len(candidates) - 1, self._n_uniform).round().astype(int)
        self._levels = self._grid[candidates[np.unique(picks)]]
        self._spread = spread_order(len(self._levels))
        self._caps = np.array([space.cap(group) for group in self._groups])
        self._interval = sparsity_interval(space)
        weights = np.array(
            [
                sum(space.layer_params.get(n, 0) for n in space.layers if space.owners[n] == g)
                for g in self._groups
            ],
            dtype=float,
        )
        self._shares = weights / max(1.0, float(sum(space.layer_params.values())))
        self._row, self._decode = self._codec.row, self._codec.decode
        self._can_structure, self._n_combos = self._codec.can_structure, self._codec.n_combos
        self._units = self._codec.units
        self._searched = np.array([AMOUNT_PREFIX + g in self._distributions for g in self._groups])
        self._history = History(
            self._codec, len(self._groups), self._feasible if self._interval is not None else None
        )
        self._options = Options(self._codec, self._caps, self._shares, self._interval)
        self._models = Models(self._codec, self._options, self._shares, max_drop or {}, deployed)
        self._fitted: tuple[int, Fitted] | None = None  # the last fit, and its modeled trials
        self._thin: ThinStart | None = None
        if budget is not None and is_thin(n_startup_trials, wanted_startup):
            levels = self._grid[np.isin(self._grid, allowed)] if allowed else self._grid
            self._thin = ThinStart(
                levels, self._codec.orders, self._codec.granularities, budget, caps=self._caps,
                searched=self._searched, structurable=self._can_structure,
            )  # fmt: skip

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    # -- Optuna's sampler interface ----------------------------------------------------------
    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._distributions)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        seen = self._history.refresh(study.get_trials(deepcopy=False))
        return self._sample(study, seen, trial.number)

    def next_params(self, study: optuna.Study) -> dict[str, Any] | None:
        """The parameters of the trial ``study`` would ask next, all at once, for a driver that
        adds the trial whole (``study.add_trial``, see :func:`sweep._samplers.ask_recipe`): the
        same as :meth:`sample_relative` would draw for it. None while enqueued trials wait:
        ``study.ask`` takes those first."""
        trials = study.get_trials(deepcopy=False)
        seen = self._history.refresh(trials)
        if self._history.waiting:
            return None
        return self._sample(study, seen, len(trials))  # Optuna numbers trials consecutively

    def _sample(self, study: optuna.Study, seen: Asked, number: int) -> dict[str, Any]:
        if self._history.count < self._n_startup and self._thin is None:
            return self._startup(number)
        if self._thin is not None:
            thin = self._thin_ask(study, seen)
            if thin is not None:
                return thin
        # A re-run recipe from outside the space (a scan's) has nothing to model; in thin mode
        # the model starts from two trials (it has no warm-up of its own).
        if len(self._history.modeled) < (2 if self._thin else 1):
            return self._startup(number)
        return self._propose(study, seen)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    # -- startup -------------------------------------------------------------------------------
    def _startup(self, number: int) -> dict[str, Any]:
        # Evenly spaced levels above the grid's minimum, each once, then again (a coarse grid
        # has fewer levels than uniform recipes asked for), in an order that spans the range
        # from the first trials: a budget cut short still sees it all.
        level = self._levels[self._spread[number % len(self._spread)]]
        amounts = np.full(len(self._groups), level)
        # Half the uniform recipes remove channels (where layers can lose them): the model needs
        # both methods' effects, structured pruning's on latency above all.
        structured = self._can_structure & (self._rng.random() < 0.5)
        if number >= self._n_uniform:
            reach = max(1, round(STARTUP_NOISE / self._step))
            amounts = amounts + self._step * self._rng.integers(-reach, reach + 1, len(amounts))
            structured = (self._rng.random(len(amounts)) < 0.3) & self._can_structure
            for unit in self._units:  # a coupled unit is structured whole or not at all
                structured[unit] = structured[unit[0]]
        amounts, flags = self._codec.couple(np.clip(amounts, self._grid[0], self._caps), structured)
        structured = flags > 0
        combo = int(self._rng.integers(self._n_combos))
        return self._decode(amounts, structured, combo)

    # -- thin mode (sweep/_layerwise_startup.py) ------------------------------------------------
    def _thin_ask(self, study: optuna.Study, seen: Asked) -> dict[str, Any] | None:
        def propose(
            amounts: np.ndarray, structured: np.ndarray, combo: int
        ) -> dict[str, Any] | None:
            params = self._decode(amounts, structured, combo)
            return None if recipe_key(params) in seen or not self._feasible(params) else params

        if self._thin is None:
            return None
        running = [dict(key) for key in seen.running]
        return self._thin.ask(
            study.directions,
            self._history.values,
            self._history.encoded,
            [self._row(params) for params in running if "order" in params],
            propose,
            self._rng,
        )

    # -- proposals -----------------------------------------------------------------------------
    def _propose(self, study: optuna.Study, seen: Asked) -> dict[str, Any]:
        signs = np.array([1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in study.directions])
        quality = [j for j, d in enumerate(study.directions) if d == StudyDirection.MAXIMIZE]
        if self._interval is not None and quality and self._rng.random() < EXCHANGE:
            exchanged = self._exchange(
                self._history.values[:, quality[0]] * signs[quality[0]], seen
            )
            if exchanged is not None:
                return exchanged
        # Asks between the same finished trials (a burst, when many slots free at once) share
        # one fit, each with its own trade-off weights; so do asks until the trials have grown
        # by REFIT_GROWTH, or by a share of those running (refit_lag).
        modeled = len(self._history.modeled)
        if self._fitted is None or modeled >= self._fitted[0] + refit_lag(
            self._fitted[0], len(seen.running)
        ):
            with one_blas_thread():
                fitted = self._models.fit(
                    self._history.encoded, self._history.values * signs, quality, self._rng
                )
            self._fitted = (modeled, fitted)
        fits, costs, bases, span, trust, limit = self._fitted[1]
        fallback: tuple[float, dict[str, Any]] | None = None
        proposal: dict[str, Any] = {}
        for _ in range(PROPOSALS):
            weights = self._rng.dirichlet(np.ones(len(fits))) / span
            proposal, row = self._allocate(costs, bases, weights, trust)
            if self._rng.random() < JITTER:
                proposal = self._jitter(proposal)
                row = None
            if recipe_key(proposal) in seen or not self._feasible(proposal):
                continue
            row = self._row(proposal) if row is None else row
            encoded_proposal = self._codec.effective(Encoded.of([row], len(self._groups)))
            excess = max(
                (float(fits[j].predict(encoded_proposal)[0]) - limit[j] for j in quality),
                default=0.0,
            )
            if excess <= 0:
                return proposal
            if fallback is None or excess < fallback[0]:
                fallback = (excess, proposal)
        return fallback[1] if fallback is not None else self._jitter(proposal)

    def _allocate(
        self, costs: np.ndarray, bases: np.ndarray, weights: np.ndarray, trust: Trust
    ) -> tuple[dict[str, Any], Row | None]:
        """The recipe that minimizes sum_j weights_j * model_j within ``trust`` and the
        constraints (layer by layer, since the model is additive: :meth:`sweep._layerwise_options.
        Options.allocate`), and the (order, granularity) of the lowest bases. ``costs``:
        (objectives, groups, options). Returns its parameters and its row (None with one method
        for all layers: the majority's)."""
        chosen = self._options.allocate(np.tensordot(weights, costs, axes=1), trust)
        # The layers' choices do not depend on (order, granularity): only the bases do.
        combo = int(np.argmin(weights @ bases))
        amounts, structured = self._options.amounts[chosen], self._options.structured[chosen]
        row = None if self._codec.global_method else (amounts, structured.astype(float), combo)
        return self._decode(amounts, structured, combo), row

    def _exchange(self, loss: np.ndarray, seen: Asked) -> dict[str, Any] | None:
        """The most accurate feasible trial with one layer group (or structured unit) pruned
        more and another less, its sparsity kept: a local step near the constraint, where the
        additive model (fitted on the better half of the trials, most of them far from it) is
        least reliable."""
        feasible = np.flatnonzero(self._history.feasible)
        if not feasible.size:
            return None
        best = int(feasible[np.argmin(loss[feasible])])
        encoded = self._history.encoded
        start, structured = encoded.amounts[best], encoded.structured[best]
        moving = movers(self._units, structured, self._searched)
        for _ in range(PROPOSALS):
            moved = exchange(
                start, moving, self._shares, self._caps, self._grid[0], self._step, self._rng
            )
            if moved is None:
                continue
            params = self._decode(moved, structured, int(encoded.combo[best]))
            if recipe_key(params) not in seen and self._feasible(params):
                return params
        return None

    def _jitter(self, params: dict[str, Any]) -> dict[str, Any]:
        amounts, structured, combo = self._row(params)
        moving = movers(self._units, structured, self._searched)
        if not moving:
            return params
        moved = jitter(amounts, moving, self._caps, self._grid[0], self._step, self._rng)
        return self._decode(moved, structured, combo)

    def _feasible(self, params: dict[str, Any]) -> bool:
        if self._interval is None:  # no constraint: every recipe is (and building one is slow)
            return True
        return is_feasible(self._space, self._space.suggest(optuna.trial.FixedTrial(params)))
