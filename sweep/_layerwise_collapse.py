"""The layerwise sampler's model of where a recipe collapses the accuracy to chance: a shrunk
logistic regression on each layer group's (effective) amount, whose log-odds, additive like the
other models, bound the allocation (see :mod:`sweep._layerwise`).

Far from the front an accuracy-like objective saturates at chance, which the additive accuracy
model (fitted on the better half of the trials) cannot see; the allocation, taking each layer to
the most its own better trials had, sent whole recipes past the edge. A bound on the share of
all the weights a recipe removes (below what nine in ten collapsed trials removed) stopped most
of that on ``resnet`` (2-7 collapsed modelled trials of 68 per seed, from 20-39), but a removed
weight of one layer is not one of another: it kept the sampler far below ``tpe``'s heavily
structured recipes (its smallest model within a point of fp32: 246-278 KB against ``tpe``'s
118-188), which remove much from the layers that can lose it.

So the collapse is modelled per layer. With ``a`` the trial's effective amounts (a structured one
as the share of channels it removes), its log-odds of collapsing are ``b + sum_l s_l(m_l) * a_l``,
each slope a pooled part shared by the groups (per method, by weight share and by group, as in
:mod:`sweep._layerwise_linear`) plus the group's own deviation, with a Gaussian prior on the
deviations and a wider one on the pooled part. The prior's strength and the pooled part's scale
are chosen by approximate leave-one-out log-loss (the weighted-ridge leverage at the fitted
IRLS weights, as for generalized linear models); the fit works on the trials' Gram matrix (the
"dual"), on at most ``SELECT_ROWS`` trials, and solves its Newton steps in the smaller of the
trials' and the features' sizes (:class:`_Kernel`). Removing weights is taken never to make a
collapse less likely: a negative slope counts as none.

On ``tpe``'s trials of ``resnet`` (3 seeds of 100-102 trials, 23-43 collapsed; 5-fold
cross-validation, 3 repeats), against a logistic regression on the share of all the weights a
trial removes alone: area under the ROC curve 0.983 against 0.936 on one seed (log-loss 0.20
against 0.33), level on the others (0.907 against 0.918, 0.957 against 0.966). Where layers
differ, it tells them apart; where they do not, it is the pooled model.

The allocation then keeps each proposal's predicted risk at most ``COLLAPSE_RISK``: a linear
bound on the per-layer terms, which the same Lagrange search as the constraints honours.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.special import expit, log_expit, logit

from sweep._cholesky import cholesky, cholesky_solve
from sweep._layerwise_linear import (
    POOL_SCALES,
    RESELECT_GROWTH,
    deviations,
    pooled,
    spread_rows,
)
from sweep._layerwise_model import Encoded, Fit

COLLAPSE_RISK = 0.2  # proposals' highest predicted chance of collapsing the accuracy
SAFE = float(logit(COLLAPSE_RISK))  # the log-odds of collapse proposals stay within
MIN_EACH = 3  # collapsed and kept trials each, before the model is fitted (else no bound)
# Prior strengths the leave-one-out chooses among, as multiples of the mean squared norm of a
# trial's own-slope features: at 1, a typical trial's log-odds have a prior spread of about one.
STRENGTHS = np.logspace(-3.0, 2.0, 6)
INTERCEPT_VARIANCE = 100.0  # the log-odds' offset is all but unpenalized
NEWTON_STEPS = 25
# From this many rows the prior is chosen among the kept one and its neighbours on the grid (one
# strength either way, one pool scale either way) instead of all of it: a choice on 400 rows
# cost 45 ms of the driver's CPU, 18 fits with their leave-one-out: over a quarter of the
# sampler's fits at a thousand zero-length trials. A quarter more trials than at the last choice
# move the best prior little: on ``synthetic`` the local choices left the hypervolumes of 3 seeds
# of 1,000 trials as they were, to the last digit; where a local choice was not the grid's, the
# two scored alike to three digits (tests/sweep/test_layerwise_collapse.py). Below it (every
# sweep of up to 200 trials), the whole grid.
LOCAL_FROM = 200
TOLERANCE = 1e-6  # on the change in log-odds between Newton steps


def _loss(labels: np.ndarray, log_odds: np.ndarray) -> np.ndarray:
    """Each trial's logistic loss (negative log-likelihood)."""
    return -(labels * log_expit(log_odds) + (1 - labels) * log_expit(-log_odds))


class _Kernel:
    """The Gram matrix ``features @ features.T`` of the trials' (prior-scaled) features, applied
    and, plus a diagonal, solved in the smaller of its two sizes: the trials' (the "dual") or,
    by the Woodbury identity, the features' (2 per layer group and 5 more). At 12 groups and 400
    trials, that is a 29x29 factorization in place of a 400x400 one at each Newton step: the
    fits of this model were a third of a driver's CPU at a thousand zero-length trials."""

    def __init__(self, features: np.ndarray) -> None:
        self.features = features
        rows, columns = features.shape
        self.gram = features @ features.T if rows <= columns else None

    def times(self, alpha: np.ndarray) -> np.ndarray:
        if self.gram is not None:
            return self.gram @ alpha
        return self.features @ (self.features.T @ alpha)

    def _factor(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The Cholesky factor of ``gram + diag(1 / weights)`` (and None), or, in the features'
        size, of ``I + F^T W F`` (and ``W F``), with ``W = diag(weights)``."""
        if self.gram is not None:
            return cholesky(self.gram + np.diag(1.0 / weights)), None
        weighted = weights[:, None] * self.features
        inner = np.eye(self.features.shape[1]) + self.features.T @ weighted
        return cholesky(inner), weighted

    def solver(self, weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """``rhs -> (gram + diag(1 / weights))^-1 rhs``, factorized once."""
        factor, weighted = self._factor(weights)
        if weighted is None:
            return lambda rhs: cholesky_solve(factor, rhs)
        features = self.features

        def solve(rhs: np.ndarray) -> np.ndarray:
            # (W^-1 + F F^T)^-1 = W - W F (I + F^T W F)^-1 F^T W: the Woodbury identity.
            scaled = weights * rhs
            return np.asarray(scaled - weighted @ cholesky_solve(factor, features.T @ scaled))

        return solve

    def inverse_diagonal(self, weights: np.ndarray) -> np.ndarray:
        """``diag((gram + diag(1 / weights))^-1)``."""
        factor, weighted = self._factor(weights)
        if weighted is None:
            return np.diag(cholesky_solve(factor, np.eye(len(weights))))
        spread = cholesky_solve(factor, weighted.T).T
        return np.asarray(weights - np.sum(weighted * spread, axis=1))


def fit_dual(
    features: np.ndarray, labels: np.ndarray, counts: np.ndarray, start: np.ndarray | None = None
) -> np.ndarray:
    """The penalized logistic regression of ``labels`` on ``features`` (scaled by the prior: the
    kernel is ``features @ features.T``; each row weighing ``counts``), by damped Newton (IRLS)
    on its dual coefficients: returns them (``alpha``; the log-odds are ``kernel @ alpha``)."""
    kernel = _Kernel(features)
    alpha = np.zeros(len(labels)) if start is None else start.copy()

    def objective(alpha: np.ndarray) -> float:
        log_odds = kernel.times(alpha)
        return float(counts @ _loss(labels, log_odds) + 0.5 * alpha @ log_odds)

    current = objective(alpha)
    for _ in range(NEWTON_STEPS):
        log_odds = kernel.times(alpha)
        chance = expit(log_odds)
        curvature = np.maximum(chance * (1 - chance), 1e-10)
        weights = counts * curvature
        working = log_odds + (labels - chance) / curvature
        target = kernel.solver(weights)(working)
        step, moved = 1.0, target - alpha
        while objective(alpha + step * moved) > current + 1e-12:  # halve a step that rises
            step /= 2
            if step < 1e-3:
                break
        if step < 1e-3:  # no step lowers it: converged as far as rounding allows
            break
        change = float(np.abs(kernel.times(step * moved)).max(initial=0.0))
        alpha = alpha + step * moved
        current = objective(alpha)
        if change < TOLERANCE:
            break
    return alpha


def loo_log_loss(features: np.ndarray, labels: np.ndarray, alpha: np.ndarray) -> float:
    """The approximate leave-one-out log-loss of :func:`fit_dual`'s fit ``alpha`` on
    ``features`` (every row weighing one): each row's log-odds without it, from the weighted
    ridge of the last Newton step, whose hat matrix has ``1 - free`` on its diagonal, with
    ``free = diag((kernel + W^-1)^-1) / w`` at the fit's IRLS weights ``w``."""
    kernel = _Kernel(features)
    log_odds = kernel.times(alpha)
    chance = expit(log_odds)
    weights = np.maximum(chance * (1 - chance), 1e-10)
    free = kernel.inverse_diagonal(weights) / weights
    working = log_odds + (labels - chance) / weights
    leverage = 1.0 - free
    left_out = (log_odds - leverage * working) / np.maximum(free, 1e-12)
    return float(np.mean(_loss(labels, left_out)))


class CollapseModel:
    """Fitted at each refit of the sampler; its prior chosen now and then. See the module
    docstring."""

    def __init__(self, shares: np.ndarray) -> None:
        self._shares = shares
        self.prior: tuple[float, float] | None = None  # (strength, pooled scale), chosen last
        self._chosen_at = 0
        self._kept: tuple[int, int] | None = None  # the prior's place: (pool, strength) indices

    def _blocks(self, encoded: Encoded, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pooled and the own features of ``rows``."""
        part = encoded.take(rows)
        return pooled(part, self._shares), deviations(part)

    @staticmethod
    def _features(shared: np.ndarray, own: np.ndarray, strength: float, pool: float) -> np.ndarray:
        """The features scaled by the prior, the offset's column last: their Gram matrix is the
        kernel ``(pool**2 * shared shared^T + own own^T) / strength + INTERCEPT_VARIANCE``."""
        offset = np.full((len(shared), 1), np.sqrt(INTERCEPT_VARIANCE))
        return np.hstack([shared * (pool / np.sqrt(strength)), own / np.sqrt(strength), offset])

    def _choose(
        self, shared: np.ndarray, own: np.ndarray, labels: np.ndarray
    ) -> tuple[float, float]:
        """The prior of least approximate leave-one-out log-loss, on the rows whose pooled and
        own features are ``shared`` and ``own`` and whose labels are ``labels``."""
        unit = float(np.sum(own**2)) / len(labels) or 1.0
        ones = np.ones(len(labels))
        best: tuple[float, int, int] | None = None
        for p, strengths in self._candidates(len(labels)).items():
            alpha = None
            for k in strengths:  # strong to weak: each fit starts the next
                features = self._features(shared, own, STRENGTHS[k] * unit, POOL_SCALES[p])
                alpha = fit_dual(features, labels, ones, alpha)
                score = loo_log_loss(features, labels, alpha)
                if best is None or score < best[0]:
                    best = (score, p, k)
        if best is None:
            return unit, POOL_SCALES[-1]
        self._kept = best[1:]
        return float(STRENGTHS[best[2]] * unit), POOL_SCALES[best[1]]

    def _candidates(self, rows: int) -> dict[int, list[int]]:
        """The priors to compare on ``rows`` rows: pool scale index -> strength indices, the
        strongest first. All of them, or from ``LOCAL_FROM`` rows the kept one's neighbours."""
        strongest_first = list(range(len(STRENGTHS)))[::-1]
        if self._kept is None or rows < LOCAL_FROM:
            return {p: strongest_first for p in range(len(POOL_SCALES))}
        pool, strength = self._kept
        near = {p: [strength] for p in (pool - 1, pool, pool + 1) if 0 <= p < len(POOL_SCALES)}
        near[pool] = [k for k in strongest_first if abs(k - strength) <= 1]
        return near

    def fit(self, encoded: Encoded, fell: np.ndarray, combos: int) -> Fit | None:
        """The model of collapse on ``encoded`` (effective amounts) where ``fell``, as a
        :class:`Fit` of the log-odds (``base``: the offset, the same for all ``combos``; slopes
        non-negative), or None while fewer than ``MIN_EACH`` trials collapsed or held. Fitted
        on every trial (at most ``SELECT_ROWS``, evenly spread), not on the other models'
        bootstrap sample: it bounds where they may go, and a sample that happened to draw no
        collapsed trial would bound nothing."""
        if min(int(fell.sum()), int((~fell).sum())) < MIN_EACH:
            return None
        labels = fell.astype(float)
        rows = spread_rows(len(labels))
        shared, own_features = self._blocks(encoded, rows)
        if self.prior is None or len(labels) >= (1 + RESELECT_GROWTH) * self._chosen_at:
            self.prior = self._choose(shared, own_features, labels[rows])
            self._chosen_at = len(labels)
        strength, pool = self.prior
        features = self._features(shared, own_features, strength, pool)
        alpha = fit_dual(features, labels[rows], np.ones(len(rows)))
        # The primal slopes: each block's prior variance times its features' share of alpha.
        common = pool**2 / strength * (shared.T @ alpha)
        own = (own_features.T @ alpha) / strength
        groups = encoded.amounts.shape[1]
        spread_weight = np.full(groups, 1.0 / max(1, groups))
        unstructured = common[0] * self._shares + common[2] * spread_weight + own[:groups]
        structured = common[1] * self._shares + common[3] * spread_weight + own[groups:]
        offset = INTERCEPT_VARIANCE * float(alpha.sum())
        return Fit(
            base=np.full(combos, offset),
            weight=np.maximum(unstructured, 0.0),
            structured_slope=np.maximum(structured, 0.0),
        )
