"""The layerwise sampler's allocation (see :mod:`sweep._layerwise`): every layer group's
(amount, method) options, the model's cost of each, and the choice of one per group within the
trust region and the constraints."""

from __future__ import annotations

import numpy as np

from sweep._feasible import constrained_choice
from sweep._layerwise_collapse import SAFE
from sweep._layerwise_model import Codec, Fit
from sweep._layerwise_trust import RiskBound, Trust
from sweep._layerwise_units import choose


class Options:
    """The columns of the allocation's cost table, the same for every group: every amount of the
    grid unstructured, then every amount structured where any group can be; per group, which of
    them it may take (structured where it can, within its cap), and what each removes (its
    amount unstructured, the share of the group's channels structured: the models' terms,
    :meth:`sweep._layerwise_model.Codec.effective`)."""

    def __init__(
        self,
        codec: Codec,
        caps: np.ndarray,
        shares: np.ndarray,
        interval: tuple[float, float] | None,
    ) -> None:
        grid = codec.grid
        methods = 2 if codec.can_structure.any() else 1
        self.amounts = np.tile(grid, methods)
        self.structured = np.arange(len(self.amounts)) >= len(grid)
        self.removed = np.hstack([np.broadcast_to(grid, codec.removed.shape), codec.removed])[
            :, : len(self.amounts)
        ]
        self._allowed = (~self.structured | codec.can_structure[:, None]) & (
            self.amounts[None, :] <= caps[:, None] + 1e-9
        )
        self._codec, self._shares, self._interval = codec, shares, interval

    def costs(self, fit: Fit) -> np.ndarray:
        """(groups, options): the model's cost of each group's every option."""
        unstructured = fit.layer_costs(self._codec.grid, False)
        if len(self.amounts) == len(self._codec.grid):
            return unstructured
        return np.hstack([unstructured, fit.layer_costs(self._codec.removed, True)])

    def risk_bound(self, collapse: Fit) -> RiskBound:
        """The collapse model's (``collapse``: its log-odds) bound on the allocation: computed
        once per fit, not at every proposal."""
        return RiskBound(self.costs(collapse), SAFE - float(collapse.base[0]))

    def choose(self, costs: np.ndarray) -> np.ndarray:
        """Per group, the option of least cost, coupled units choosing together."""
        return choose(costs, self._codec.units, len(self._codec.grid))  # unstructured first

    def allocate(self, weighted: np.ndarray, trust: Trust) -> np.ndarray:
        """Per group, the option of least ``weighted`` cost (groups, options) within ``trust``
        and the constraints: exact for an additive cost, by a Lagrange multiplier on the
        sparsity that keeps the constraints, or else on the collapse model's log-odds (or the
        weights removed in all, before it is fitted)."""

        def table(reach: np.ndarray | None) -> np.ndarray:
            allowed = self._allowed
            if reach is not None:  # what each option removes within the group's reach
                allowed = allowed & (self.removed <= reach[:, None] + 1e-9)
            return np.where(allowed, weighted, np.inf)

        options = table(trust.reach)
        if self._interval is not None:
            amounts = np.broadcast_to(self.amounts, options.shape)
            reached = np.where(np.isfinite(options), amounts, -np.inf).max(axis=1)
            if float(self._shares @ reached) < self._interval[0]:
                options = table(None)  # the constraint asks for more than the trust region
            return constrained_choice(options, amounts, self._shares, self._interval, self.choose)
        if trust.collapse is not None:
            risk = trust.collapse
            return constrained_choice(
                options, risk.costs, np.ones(len(risk.costs)), (-np.inf, risk.room), self.choose
            )
        return constrained_choice(
            options, self.removed, self._shares, (0.0, trust.removed), self.choose
        )
