"""The layerwise sampler's trust region: where its model, fitted on the better half of the
trials, may send a proposal (see :mod:`sweep._layerwise`): per layer group, near the amounts the
better trials had; in all, within the collapse model's risk (:mod:`sweep._layerwise_collapse`),
or, before it can be fitted, within the weights the better trials removed."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

TRUST = 2  # grid steps a layer may go past its highest amount among the better trials
COLLAPSE_QUANTILE = 0.1  # of the collapsed trials' removed weights: proposals remove less


class RiskBound(NamedTuple):
    """The collapse model's log-odds terms of every (group, option) of the allocation, and the
    most their sum may be (the log-odds of :data:`sweep._layerwise_collapse.SAFE` less the
    model's offset)."""

    costs: np.ndarray
    room: float


class Trust(NamedTuple):
    """Per layer group, the most a proposal may remove of it; and the log-odds of collapse
    (:class:`sweep._layerwise_collapse.CollapseModel`) that proposals stay within, or, without
    one, the most of all the weights they may remove (their sparsity, each structured amount
    counted as the channels it removes)."""

    reach: np.ndarray
    removed: float
    collapse: RiskBound | None = None


def trust_region(
    amounts: np.ndarray,
    better: np.ndarray,
    fell: np.ndarray,
    shares: np.ndarray,
    step: float,
    collapse: RiskBound | None = None,
) -> Trust:
    """The trust region of trials with (effective) ``amounts`` (rows), of which ``better`` the
    model was fitted on and ``fell`` collapsed the accuracy; ``shares``: each group's share of
    the weights; ``step``: the amount grid's; ``collapse``: the collapse model's bound, where
    fitted."""
    # The model is fitted where the better trials are, so no layer goes more than TRUST grid
    # steps past the highest amount it had in one of them ...
    reach = amounts[better].max(axis=0) + TRUST * step
    if collapse is not None:  # ... and the collapse model says how far all may go at once
        return Trust(reach, 1.0, collapse)
    # ... and none removes more of all the weights than the most one of them did, plus as much:
    # each layer's reach came from its own trials, and all of them at once collapsed the
    # accuracy to chance (resnet, where a trial's removed weights told its collapse apart with
    # an AUC of 0.97) ...
    removed_weights = amounts @ shares
    removed = float(removed_weights[better].max()) + TRUST * step
    # ... nor as much as the trials that collapsed the accuracy mostly did: the better half is no
    # guide where half the trials fell (on resnet, the bound above still let a third of the
    # modelled trials collapse; this one, 2-7 of 68 per seed).
    if fell.any():
        removed = min(removed, float(np.quantile(removed_weights[fell], COLLAPSE_QUANTILE)))
    return Trust(reach, removed)
