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
"dual"), whose size is the trials', not the groups', kept below ``SELECT_ROWS``. Removing weights
is taken never to make a collapse less likely: a negative slope counts as none.

On ``tpe``'s trials of ``resnet`` (3 seeds of 100-102 trials, 23-43 collapsed; 5-fold
cross-validation, 3 repeats), against a logistic regression on the share of all the weights a
trial removes alone: area under the ROC curve 0.983 against 0.936 on one seed (log-loss 0.20
against 0.33), level on the others (0.907 against 0.918, 0.957 against 0.966). Where layers
differ, it tells them apart; where they do not, it is the pooled model.

The allocation then keeps each proposal's predicted risk at most ``COLLAPSE_RISK``: a linear
bound on the per-layer terms, which the same Lagrange search as the constraints honours.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.special import expit, log_expit, logit

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
TOLERANCE = 1e-6  # on the change in log-odds between Newton steps


def _loss(labels: np.ndarray, log_odds: np.ndarray) -> np.ndarray:
    """Each trial's logistic loss (negative log-likelihood)."""
    return -(labels * log_expit(log_odds) + (1 - labels) * log_expit(-log_odds))


def fit_dual(
    kernel: np.ndarray, labels: np.ndarray, counts: np.ndarray, start: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The penalized logistic regression of ``labels`` on features whose prior-scaled Gram
    matrix is ``kernel`` (each row weighing ``counts``), by damped Newton (IRLS) on its dual
    coefficients: returns them (``alpha``, the log-odds being ``kernel @ alpha``) and
    ``diag((kernel + W^-1)^-1) / w`` at the fit, from which the leave-one-out follows."""
    alpha = np.zeros(len(labels)) if start is None else start.copy()

    def objective(alpha: np.ndarray) -> float:
        log_odds = kernel @ alpha
        return float(counts @ _loss(labels, log_odds) + 0.5 * alpha @ log_odds)

    current = objective(alpha)
    for _ in range(NEWTON_STEPS):
        log_odds = kernel @ alpha
        chance = expit(log_odds)
        curvature = np.maximum(chance * (1 - chance), 1e-10)
        weights = counts * curvature
        working = log_odds + (labels - chance) / curvature
        factor = cho_factor(kernel + np.diag(1.0 / weights), check_finite=False)
        target = np.asarray(cho_solve(factor, working, check_finite=False))
        step, moved = 1.0, target - alpha
        while objective(alpha + step * moved) > current + 1e-12:  # halve a step that rises
            step /= 2
            if step < 1e-3:
                break
        if step < 1e-3:  # no step lowers it: converged as far as rounding allows
            break
        change = float(np.abs(kernel @ (step * moved)).max(initial=0.0))
        alpha = alpha + step * moved
        current = objective(alpha)
        if change < TOLERANCE:
            break
    log_odds = kernel @ alpha
    chance = expit(log_odds)
    weights = counts * np.maximum(chance * (1 - chance), 1e-10)
    factor = cho_factor(kernel + np.diag(1.0 / weights), check_finite=False)
    inverse_diagonal = np.diag(cho_solve(factor, np.eye(len(labels)), check_finite=False))
    return alpha, inverse_diagonal / weights


def loo_log_loss(
    kernel: np.ndarray, labels: np.ndarray, alpha: np.ndarray, free: np.ndarray
) -> float:
    """The approximate leave-one-out log-loss of the fit ``alpha`` (every row weighing one):
    each row's log-odds without it, from the weighted ridge of the last Newton step, whose hat
    matrix has ``1 - free`` on its diagonal (``free``: from :func:`fit_dual`)."""
    log_odds = kernel @ alpha
    chance = expit(log_odds)
    working = log_odds + (labels - chance) / np.maximum(chance * (1 - chance), 1e-10)
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

    def _kernels(self, encoded: Encoded, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        part = encoded.take(rows)
        shared, own = pooled(part, self._shares), deviations(part)
        return shared @ shared.T, own @ own.T

    @staticmethod
    def _kernel(shared: np.ndarray, own: np.ndarray, strength: float, pool: float) -> np.ndarray:
        return (pool**2 * shared + own) / strength + INTERCEPT_VARIANCE

    def _choose(
        self, shared: np.ndarray, own: np.ndarray, labels: np.ndarray
    ) -> tuple[float, float]:
        """The prior of least approximate leave-one-out log-loss, on the rows whose Gram
        matrices are ``shared`` and ``own`` and whose labels are ``labels``."""
        unit = float(np.trace(own)) / len(labels) or 1.0
        ones = np.ones(len(labels))
        best: tuple[float, float, float] | None = None
        for pool in POOL_SCALES:
            alpha = None
            for strength in STRENGTHS[::-1] * unit:  # strong to weak: each starts the next
                kernel = self._kernel(shared, own, strength, pool)
                alpha, free = fit_dual(kernel, labels, ones, alpha)
                score = loo_log_loss(kernel, labels, alpha, free)
                if best is None or score < best[0]:
                    best = (score, strength, pool)
        return (best[1], best[2]) if best is not None else (unit, POOL_SCALES[-1])

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
        shared_kernel, own_kernel = self._kernels(encoded, rows)
        if self.prior is None or len(labels) >= (1 + RESELECT_GROWTH) * self._chosen_at:
            self.prior = self._choose(shared_kernel, own_kernel, labels[rows])
            self._chosen_at = len(labels)
        strength, pool = self.prior
        kernel = self._kernel(shared_kernel, own_kernel, strength, pool)
        alpha, _ = fit_dual(kernel, labels[rows], np.ones(len(rows)))
        part = encoded.take(rows)
        # The primal slopes: each block's prior variance times its features' share of alpha.
        common = pool**2 / strength * (pooled(part, self._shares).T @ alpha)
        own = (deviations(part).T @ alpha) / strength
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
