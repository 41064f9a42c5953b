"""Coupled units in the layerwise sampler: which layer groups structured pruning couples, and
how a recipe chooses and moves them.

Structured pruning removes the same output channels from every layer of a coupled group (the
q/k/v projections of an attention module lose the same heads; the convs or Linear layers whose
outputs are added in a residual lose the same channels: in a Transformer, every block's
attention output and second MLP layer), by the largest amount any structured member asks for
(:mod:`trials._structured`). A model that gave each layer its own structured amount put the
whole group's effect on whichever member asked the most, and a move of one member changed
nothing or everything. So the sampler treats the layer groups that share such a coupling as one
unit (:func:`coupled_units`): in a recipe a unit is structured at one amount or not at all
(:meth:`sweep._layerwise_model.Codec.couple`), the allocation chooses so (:func:`choose`), and a
local move shifts a structured unit whole (:func:`jitter`, :func:`exchange`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sweep._space import Space


def coupled_units(
    space: Space, groups: Sequence[str], can_structure: np.ndarray
) -> list[np.ndarray]:
    """The sets (two or more) of layer groups (indices into ``groups``, tie owners) that
    structured pruning couples: groups joined by a shared coupled group of ``space.coupled``,
    transitively (a tie group across two coupled groups joins them). Only groups that can take
    method ``structured`` are joined."""
    index = {group: i for i, group in enumerate(groups)}
    parent = list(range(len(groups)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for coupled in space.coupled:
        members = sorted(
            {index[space.owners[n]] for n in coupled if n in space.owners}
            & set(np.flatnonzero(can_structure).tolist())
        )
        for member in members[1:]:
            parent[root(member)] = root(members[0])
    units: dict[int, list[int]] = {}
    for i in range(len(groups)):
        units.setdefault(root(i), []).append(i)
    return [np.array(unit) for unit in units.values() if len(unit) > 1]


def choose(costs: np.ndarray, units: Sequence[np.ndarray], loose: int) -> np.ndarray:
    """Per layer group (row of ``costs``), the option (column) of least cost, where the first
    ``loose`` options are unstructured and the rest structured: the groups of a unit are
    structured together at one amount, or each takes its best unstructured option, whichever
    costs less in all (the model is additive, so that is exact)."""
    chosen = np.argmin(costs, axis=1)
    for unit in units:
        alone = costs[unit, :loose]
        together = costs[unit, loose:].sum(axis=0)  # infinite where a member cannot
        best = int(np.argmin(together)) if together.size else 0
        if together.size and together[best] < alone.min(axis=1).sum():
            chosen[unit] = loose + best
        else:
            chosen[unit] = np.argmin(alone, axis=1)
    return chosen


def movers(
    units: Sequence[np.ndarray], structured: np.ndarray, searched: np.ndarray
) -> list[np.ndarray]:
    """What a local move of a recipe with ``structured`` flags shifts: each unit that is
    structured there as one, every other ``searched`` group alone."""
    together = [unit for unit in units if structured[unit].any()]
    alone = searched.copy()
    for unit in together:
        alone[unit] = False
    return [unit for unit in together if searched[unit].any()] + [
        np.array([group]) for group in np.flatnonzero(alone)
    ]


def _level(amounts: np.ndarray, mover: np.ndarray) -> float:
    return float(amounts[mover].max())


def jitter(
    amounts: np.ndarray,
    moving: Sequence[np.ndarray],
    caps: np.ndarray,
    low: float,
    step: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``amounts`` with one or two movers shifted by one or two grid steps, up or down."""
    moved = amounts.copy()
    for pick in rng.permutation(len(moving))[: rng.integers(1, 3)]:
        mover = moving[pick]
        shift = step * int(rng.choice([-2, -1, 1, 2]))
        moved[mover] = np.clip(_level(amounts, mover) + shift, low, caps[mover].min())
    return np.round(moved, 6)


def exchange(
    amounts: np.ndarray,
    moving: Sequence[np.ndarray],
    shares: np.ndarray,
    caps: np.ndarray,
    low: float,
    step: float,
    rng: np.random.Generator,
) -> np.ndarray | None:
    """``amounts`` with one mover pruned more by one or two grid steps and another less by as
    many whole steps as keep the sparsity (``shares``: each group's share of the weights), or
    None where the draw moves nothing."""
    if len(moving) < 2:
        return None
    up, down = (moving[i] for i in rng.choice(len(moving), size=2, replace=False))
    start = _level(amounts, up)
    raised = min(float(caps[up].min()), start + step * int(rng.integers(1, 3)))
    gained = (raised - start) * float(shares[up].sum())
    down_share = float(shares[down].sum())
    if gained <= 0 or down_share <= 0:
        return None
    steps = np.floor(gained / (down_share * step) + 1e-9)
    moved = amounts.copy()
    moved[up] = raised
    moved[down] = max(low, _level(amounts, down) - steps * step)
    return np.round(moved, 6)
