"""The layerwise sampler's models of a sweep's trials, fitted together at an ask (see
:mod:`sweep._layerwise`): one per objective, the model of collapse, and what they bound.

Two things the trials alone taught the models badly, and what they are told instead:

- **Which trials are of use.** A trial that collapsed to chance is out; so, with
  ``sampler_settings.max_drop``, is one further below the best trial than that: 20 points down
  is no collapse, and as useless to a user who wants a point or two. Both kinds train the model
  of collapse (:mod:`sweep._layerwise_collapse`), which keeps proposals out of them, except the
  trials of an (order, granularity) that collapsed with nothing pruned: its training or
  quantization lost the accuracy, and they bound no pruning
  (:func:`sweep._layerwise_startup.unpruned_collapses`).
- **What the training order changes.** ``prune_ptq`` and ``prune_qat`` load as the same graph
  (``trials.deployed_form``): the same size, the same latency. With a base per (order,
  granularity), a size model's bases took up what its shrunk slopes left of the amounts'
  effect, so an order whose trials had pruned more looked smaller at the same amounts: on
  ``resnet``, 37 KB (a sixth of the sizes' spread) between the two, and the sampler asked
  ``prune_ptq``, 6 points less accurate at any amount, in 21 of its 68 modeled trials (29 with
  ``max_drop``). The objectives the loaded model alone decides (``deployed``) now have a base
  per deployed form. And an order that no better trial ran (for being worse) had the best base
  there, 0, and was asked again and again: it now takes its base from its own trials within the
  amounts the fit saw (:meth:`Fit.with_unseen_bases`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping

import numpy as np

from sweep._layerwise_collapse import CollapseModel
from sweep._layerwise_linear import ShrunkLinear
from sweep._layerwise_model import Codec, Encoded, Fit, Sample, ShapeSearch, better_trials
from sweep._layerwise_options import Options
from sweep._layerwise_startup import collapsed, unpruned_collapses
from sweep._layerwise_trust import Trust, trust_region

# A fit: the models, their costs and bases, the objectives' spans, the trust region, the limits.
Fitted = tuple[list[Fit], np.ndarray, np.ndarray, np.ndarray, Trust, dict[int, float]]


class Models:
    """Every objective's model over ``codec``'s layer groups (``shares``: their share of the
    weights), refitted at each ask from the state kept between asks (each convex model's shape,
    each linear model's and the collapse model's shrinkage).

    ``max_drop``: by objective index, the accuracy window below the best trial;
    ``deployed``: the indices of the objectives that the loaded model alone decides."""

    def __init__(
        self,
        codec: Codec,
        options: Options,
        shares: np.ndarray,
        max_drop: Mapping[int, float],
        deployed: Collection[int],
    ) -> None:
        self._codec = codec
        self._options = options
        self._shares = shares
        self.max_drop = dict(max_drop)
        self._deployed = frozenset(deployed)
        self._shapes: dict[int, ShapeSearch] = {}  # per accuracy-like objective
        self._linear: dict[int, ShrunkLinear] = {}  # per other objective
        self._collapse = CollapseModel(shares)

    def fit(
        self, history: Encoded, values: np.ndarray, quality: list[int], rng: np.random.Generator
    ) -> Fitted:
        """The model of every objective on a bootstrap sample of the modeled trials
        (``history``; ``values``: theirs, minimized; ``quality``: the accuracy-like objectives),
        each one's cost of every (group, option), the objectives' spans, the trust region and
        limits."""
        encoded = self._codec.effective(history)  # as the model sees trials
        kept = np.ones(len(values), dtype=bool)
        for j in quality:
            kept &= better_trials(values[:, j])
        rows = np.flatnonzero(kept) if kept.sum() >= 2 else np.arange(len(values))
        sample = Sample.of(rows[rng.integers(len(rows), size=len(rows))])  # bootstrap
        fits = [
            self._fit_quality(j, encoded, values[:, j] - values[kept, j].min(), sample)
            if j in quality
            else self._fit_linear(j, encoded, values[:, j], sample)
            for j in range(values.shape[1])
        ]
        low, high = values[kept].min(axis=0), values[kept].max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        fell = self.fell(values, quality)
        # Trials of a combo that lost the accuracy unpruned tell nothing of pruning:
        # neither the model of collapse nor the trust region reads them (the accuracy model's
        # base for that combo keeps proposals off it).
        out = unpruned_collapses(encoded.combo, encoded.amounts.max(axis=1) > 0.0, fell)
        pruning = np.flatnonzero(~out)
        collapse = (
            self._collapse.fit(encoded.take(pruning), fell[pruning], self._codec.n_combos)
            if quality
            else None
        )
        bound = None if collapse is None else self._options.risk_bound(collapse)
        trust = trust_region(
            encoded.amounts, kept, fell & ~out, self._shares, self._codec.step, bound
        )
        # The model is fitted on the better part of the trials: a proposal it predicts to fall
        # outside that part (a model ruined for size) is an extrapolation, and useless anyway;
        # so is one below the accuracy window (``max_drop``).
        limit = {j: min(high[j] - low[j], self.max_drop.get(j, math.inf)) for j in quality}
        # Each objective's cost of every (group, option), and its bases: the weights change
        # from draw to draw, the fits do not.
        costs = np.stack([self._options.costs(fit) for fit in fits])
        bases = np.stack([fit.base for fit in fits])
        return fits, costs, bases, span, trust, limit

    def fell(self, values: np.ndarray, quality: list[int]) -> np.ndarray:
        """The trials (``values``: minimized) out of use: collapsed to chance, or further below
        the best trial than ``max_drop``."""
        if not quality:
            return np.zeros(len(values), dtype=bool)
        j = quality[0]
        fell = collapsed(-values[:, j])
        if j in self.max_drop:
            fell |= values[:, j] > values[:, j].min() + self.max_drop[j]
        return fell

    def _fit_quality(self, j: int, encoded: Encoded, y: np.ndarray, sample: Sample) -> Fit:
        """Objective ``j``'s convex model; a combo that no better trial ran: the least excess of
        its own trials over what the model predicts from their amounts."""
        one_hot = np.eye(self._codec.n_combos)[encoded.combo]
        fit = self._shapes.setdefault(j, ShapeSearch()).fit(encoded, one_hot, y, sample)
        return fit.with_unseen_bases(encoded, y, sample, np.min)

    def _fit_linear(self, j: int, encoded: Encoded, y: np.ndarray, sample: Sample) -> Fit:
        """Objective ``j``'s linear model: a base per (order, granularity), or per deployed form
        for the objectives the loaded model alone decides (expanded to each combo's); a base
        that no trial of the sample ran: the median of its own trials' excess."""
        model = self._linear.setdefault(j, ShrunkLinear(self._shares))
        form = self._codec.form if j in self._deployed else np.arange(self._codec.n_combos)
        by_form = Encoded(encoded.amounts, encoded.structured, form[encoded.combo])
        fit = model.fit(by_form, np.eye(int(form.max()) + 1)[by_form.combo], y, sample)
        fit = fit.with_unseen_bases(by_form, y, sample, np.median)
        return dataclasses.replace(fit, base=fit.base[form])
