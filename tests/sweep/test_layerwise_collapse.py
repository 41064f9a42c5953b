"""``sampler: layerwise`` models where a recipe collapses the accuracy, per layer
(``sweep._layerwise_collapse``), and keeps its proposals within that model's risk."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from sweep import _layerwise_collapse as _collapse
from sweep._layerwise_collapse import (
    LOCAL_FROM,
    SAFE,
    STRENGTHS,
    CollapseModel,
    _Kernel,
    fit_dual,
    loo_log_loss,
)
from sweep._layerwise_linear import POOL_SCALES
from sweep._layerwise_model import Encoded


def _data(rows: int, columns: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, columns))
    truth = rng.normal(size=columns)
    labels = (rng.random(rows) < expit(features @ truth - 0.5)).astype(float)
    return features, labels


def _with_offset(features: np.ndarray, variance: float) -> np.ndarray:
    """``features`` and a constant column whose prior variance is ``variance``: the kernel
    ``features @ features.T + variance``."""
    return np.hstack([features, np.full((len(features), 1), np.sqrt(variance))])


def _log_odds(features: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The log-odds of a dual fit ``alpha`` on ``features``: ``features @ features.T @ alpha``."""
    return features @ (features.T @ alpha)


def test_the_dual_fit_is_the_penalized_logistic_regression() -> None:
    """On the kernel ``X X^T / strength`` (plus a wide offset), the dual Newton fit's log-odds
    are scikit-learn's L2-penalized logistic regression's (C = 1 / strength), also with more
    columns than rows, where the labels can be separated."""
    for rows, columns in ((80, 5), (30, 60)):
        features, labels = _data(rows, columns, seed=columns)
        strength = 2.0
        scaled = _with_offset(features / np.sqrt(strength), 1e6)
        alpha = fit_dual(scaled, labels, np.ones(rows))
        reference = LogisticRegression(C=1 / strength, tol=1e-10, max_iter=10_000)
        reference.fit(features, labels)
        expected = reference.decision_function(features)
        np.testing.assert_allclose(_log_odds(scaled, alpha), expected, atol=2e-3)


def test_the_fit_is_the_same_in_the_features_size_and_in_the_trials() -> None:
    """Fewer features than trials: the Newton steps are solved in the features' size (by the
    Woodbury identity). Columns of zeros, which leave the kernel as it is, make the features
    outnumber the trials and the steps solved in theirs: the same fit and leverage."""
    features, labels = _data(90, 7, seed=3)
    counts = np.random.default_rng(1).integers(1, 3, size=90).astype(float)
    scaled = _with_offset(features, 100.0)
    alpha = fit_dual(scaled, labels, counts)
    padded = np.hstack([scaled, np.zeros((90, 90))])
    alpha_dual = fit_dual(padded, labels, counts)
    np.testing.assert_allclose(alpha, alpha_dual, rtol=1e-6, atol=1e-8)
    chance = expit(_log_odds(scaled, alpha))
    weights = counts * chance * (1 - chance)
    np.testing.assert_allclose(
        _Kernel(scaled).inverse_diagonal(weights),
        _Kernel(padded).inverse_diagonal(weights),
        rtol=1e-6,
    )
    score = loo_log_loss(scaled, labels, alpha)
    assert score == pytest.approx(loo_log_loss(padded, labels, alpha), rel=1e-6)


def test_repeated_rows_weigh_as_counts() -> None:
    """A bootstrap sample's repeated rows are one row with a count: the same fit."""
    features, labels = _data(40, 6, seed=1)
    counts = np.random.default_rng(0).integers(1, 4, size=40).astype(float)
    repeated = np.repeat(np.arange(40), counts.astype(int))
    scaled = _with_offset(features, 100.0)
    alpha = fit_dual(scaled, labels, counts)
    full = scaled[repeated]
    alpha_full = fit_dual(full, labels[repeated], np.ones(len(repeated)))
    np.testing.assert_allclose(
        _log_odds(scaled, alpha)[repeated], _log_odds(full, alpha_full), atol=1e-6
    )


def test_the_leave_one_out_is_close_to_refitting_without_each_row() -> None:
    features, labels = _data(60, 4, seed=2)
    scaled = _with_offset(features, 100.0)
    alpha = fit_dual(scaled, labels, np.ones(60))
    exact = []
    for i in range(60):
        keep = np.arange(60) != i
        alpha_i = fit_dual(scaled[keep], labels[keep], np.ones(59))
        log_odds = float(scaled[i] @ (scaled[keep].T @ alpha_i))
        exact.append(-np.log(expit(log_odds if labels[i] else -log_odds)))
    approximate = loo_log_loss(scaled, labels, alpha)
    assert abs(approximate - float(np.mean(exact))) < 0.02 * float(np.mean(exact))


def _trials(sensitive: int, groups: int, count: int, seed: int) -> tuple[Encoded, np.ndarray]:
    """Trials at random amounts that collapse where group ``sensitive`` passes 0.35 or all
    groups together remove over 0.75 of the weights (equal shares)."""
    rng = np.random.default_rng(seed)
    amounts = rng.choice([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9], size=(count, groups))
    fell = (amounts[:, sensitive] > 0.35) | (amounts.mean(axis=1) > 0.75)
    encoded = Encoded(amounts, np.zeros_like(amounts), np.zeros(count, dtype=int))
    return encoded, fell


def test_the_model_tells_the_layer_that_collapses_the_accuracy_from_the_others() -> None:
    groups = 12
    encoded, fell = _trials(sensitive=4, groups=groups, count=120, seed=0)
    model = CollapseModel(np.full(groups, 1 / groups))
    fit = model.fit(encoded, fell, 1)
    assert fit is not None
    others = np.delete(fit.weight, 4)
    assert fit.weight[4] > 5 * float(np.median(others))
    # At the allowed risk, the sensitive group may not go past the amount that collapses it,
    # while all the others together still may remove half of their weights.
    room = SAFE - fit.base[0]
    assert fit.weight[4] * 0.4 > room
    assert float(others.sum()) * 0.5 < room
    # On trials it has not seen, it flags (at the allowed risk) every one that collapses, and
    # lets most of those far from collapsing through: the sensitive group at most 0.2, half of
    # all the weights removed.
    unseen, unseen_fell = _trials(sensitive=4, groups=groups, count=400, seed=1)
    risky = fit.predict(unseen) > SAFE
    assert bool(risky[unseen_fell].all())
    safe = (unseen.amounts[:, 4] <= 0.2) & (unseen.amounts.mean(axis=1) <= 0.5)
    assert float(np.mean(~risky[safe])) >= 0.6


def test_no_model_before_enough_trials_collapsed_and_held() -> None:
    encoded, fell = _trials(sensitive=0, groups=4, count=30, seed=2)
    model = CollapseModel(np.full(4, 0.25))
    few = fell & (np.cumsum(fell) <= 2)
    assert model.fit(encoded, few, 1) is None
    assert model.fit(encoded, np.zeros(30, dtype=bool), 1) is None
    assert model.fit(encoded, fell, 1) is not None


def test_past_local_from_rows_the_prior_is_chosen_near_the_kept_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first choice compares every prior of the grid; from LOCAL_FROM rows on, a new choice
    compares the kept one and its neighbours (at most 5 of the 18), and scores as well as the
    whole grid's choice on the same trials (here the pool scales tie at the weakest prior)."""
    fits: list[int] = []
    fit = _collapse.fit_dual

    def counted(*args: Any, **kwargs: Any) -> np.ndarray:
        fits.append(1)
        return fit(*args, **kwargs)

    monkeypatch.setattr(_collapse, "fit_dual", counted)
    groups = 12
    shares = np.full(groups, 1 / groups)
    encoded, fell = _trials(sensitive=4, groups=groups, count=LOCAL_FROM, seed=0)
    model = CollapseModel(shares)
    assert model.fit(encoded, fell, 1) is not None
    assert len(fits) == len(POOL_SCALES) * len(STRENGTHS) + 1  # the choice, then the fit
    more, more_fell = _trials(sensitive=4, groups=groups, count=2 * LOCAL_FROM, seed=1)
    fits.clear()
    assert model.fit(more, more_fell, 1) is not None
    assert len(fits) <= 5 + 1
    whole = CollapseModel(shares)
    whole.fit(more, more_fell, 1)
    assert model.prior is not None and whole.prior is not None
    shared, own = model._blocks(more, np.arange(len(more_fell)))
    labels = more_fell.astype(float)

    def score(prior: tuple[float, float]) -> float:
        features = model._features(shared, own, *prior)
        return loo_log_loss(features, labels, fit(features, labels, np.ones(len(labels))))

    assert score(model.prior) <= 1.01 * score(whole.prior)
