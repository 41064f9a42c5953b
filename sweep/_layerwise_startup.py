"""The layerwise sampler's first recipes when the budget is too thin for its model's warm-up.

The model has a term per layer group and wants about half as many uniform recipes as groups,
plus ten moved ones (``sweep._samplers.wanted_startup``), before it is fitted; the warm-up is
cut to a third of the budget. At 16 trials on a deep model that left the model 5 trials of
random orders and granularities, and it lost to a plain grid of uniform recipes (every level 0.2
apart, every order, granularity and method: 40 trials, 0.038 of hypervolume on ``transformer``
against layerwise's 0.021; on ``resnet`` too the smallest model within a point of fp32 came from
that grid: README, deep models at a thin budget), while the best uniform recipes hold 96-97% of
the exact front's hypervolume at depth (scripts/bench_depth.py). So, in thin mode, the sampler asks
uniform recipes (every searched layer at one level) for the first half of the budget:

- each option (order, granularity, method) once before any twice, interleaved so that a budget
  cut short saw every order, granularity and method; then the options with a recipe on the
  current front before the others;
- levels spread over the range in bisection order (the bottom, the middle, the quarters, ...),
  each method at the levels it has fewest recipes at first, so that the options together cover
  the range; levels at or above one whose recipe collapsed the accuracy are skipped (on a deep
  model most of the range does);

and then refines, half its asks each: its model, fitted on the trials so far (per layer, within
the trust region around the better half of them: :meth:`sweep._layerwise.LayerwiseSampler.
_propose`), and uniform neighbours of the front: the uniform recipe not asked yet whose level is
nearest a level on the front for its method (the same level in another order or granularity
first, then a grid step away). On ``synthetic`` the model alone and this mix did alike; on
``transformer``, whose front is a few structured levels, the mix scored 0.016 against the model
alone's 0.0095 (one of its seeds on a loaded machine; the grid: 0.023). Local per-layer moves
around the front's recipes instead of the model did worse on ``synthetic`` (README, deep models
at a thin budget).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
from optuna.study import StudyDirection

from sweep._layerwise_model import Encoded, Row

FLOAT_ORDER = "prune_float"  # quantizes nothing: its granularity changes nothing
# Thin mode when the budget leaves the model less than this share of the warm-up it wants: all
# of it, since even just short of it (12 layers at 40 and 60 trials, 30 layers at 60 and 80, 100
# at 100 and 150) thin mode did better on ``synthetic`` than the cut warm-up (README, deep models
# at a thin budget).
THIN_SHARE = 1.0
UNIFORM_SHARE = 0.5  # of a thin budget, spent on uniform recipes (at least one per option)
# A trial has collapsed when its accuracy is in the lower COLLAPSE_BAND of the range seen and
# that range is over COLLAPSE_RANGE of the best accuracy: it lost much of what the best kept.
COLLAPSE_BAND = 0.5
COLLAPSE_RANGE = 0.2
NEIGHBOUR = 0.5  # after the uniform recipes, the share of asks that are uniform neighbours
OFF_FRONT = 1  # an option with no recipe on the front waits this many rounds for its next one

Option = tuple[int, bool]  # (order-granularity combo, structured)


def spread_order(count: int) -> list[int]:
    """The indices ``0 .. count - 1`` of ascending levels in an order that covers their range
    from the first ones: the top, the bottom, then each time the one farthest from those taken
    (ties: the higher). A budget cut short still saw the whole range, not its low end."""
    order = [count - 1, 0][: max(0, min(count, 2))]
    while len(order) < count:
        left = [i for i in range(count) if i not in order]
        order.append(max(left, key=lambda i: (min(abs(i - j) for j in order), i)))
    return order


def is_thin(n_startup: int, wanted: int | None) -> bool:
    """Whether the warm-up the budget leaves (``n_startup``) is too short for the model."""
    return wanted is not None and n_startup < THIN_SHARE * wanted


def uniform_options(
    orders: Sequence[str], granularities: Sequence[str], methods: int
) -> list[Option]:
    """Every (combo, structured) option of a uniform recipe, ``prune_float`` at one granularity,
    interleaved: consecutive options differ in order, granularity and, alternately, method, so
    that the first few already span them."""
    combos = [
        (o, g)
        for o in range(len(orders))
        for g in range(len(granularities))
        if orders[o] != FLOAT_ORDER or g == 0
    ]
    # prune_float last: int8 is what a thin budget looks at first (float keeps 4 bytes a weight).
    combos.sort(
        key=lambda c: (orders[c[0]] == FLOAT_ORDER, (c[1] - c[0]) % len(granularities), c[0])
    )
    combo_ids = [o * len(granularities) + g for o, g in combos]
    count = len(combo_ids) * methods
    return [
        (combo_ids[j % len(combo_ids)], bool((j % len(combo_ids) + j // len(combo_ids)) % methods))
        for j in range(count)
    ]


def uniform_budget(budget: int, options: int, candidates: int) -> int:
    """How many uniform recipes a thin budget starts with."""
    return min(candidates, max(options, math.ceil(UNIFORM_SHARE * budget)))


def collapsed(quality: np.ndarray) -> np.ndarray:
    """Trials whose accuracy-like objective (maximized, raw values) collapsed: see above."""
    if quality.size < 2:
        return np.zeros(quality.size, dtype=bool)
    best, worst = float(quality.max()), float(quality.min())
    if best - worst <= COLLAPSE_RANGE * abs(best):
        return np.zeros(quality.size, dtype=bool)
    return quality <= worst + COLLAPSE_BAND * (best - worst)


def unpruned_collapses(combo: np.ndarray, pruned: np.ndarray, fell: np.ndarray) -> np.ndarray:
    """The trials of (order, granularity) combos that collapsed with nothing pruned (``combo``:
    each trial's; ``pruned``: whether it pruned anything; ``fell``: whether it collapsed). Their
    training or quantization lost the accuracy, not their pruning: they say nothing of how far
    pruning may go. On the full-size ResNet-18, ``prune_ptq`` kept 41% with no weight pruned,
    where fp32 had 89% (its epoch of fine-tuning at the default learning rate had taken the fp32
    model itself to 41%; QAT's epoch after it brought ``prune_qat`` back to 85%). Read as a
    pruning collapse, that one trial bounded every later recipe to the weights it removed, none,
    and 55 of 60 trials pruned under 2% of them."""
    failed = np.unique(combo[fell & ~pruned])
    return np.isin(combo, failed)


def front(values: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``values`` (every column minimized) that no other row dominates."""
    keep = []
    for i, row in enumerate(values):
        dominated = np.all(values <= row, axis=1) & np.any(values < row, axis=1)
        if not dominated.any():
            keep.append(i)
    return np.array(keep, dtype=int)


def bisection_order(count: int) -> list[int]:
    """The indices ``0 .. count - 1`` of ascending levels, the bottom first, then the middle of
    the range, its quarters (the lower first), eighths, ...: uniform recipes reach the levels
    where a deep model keeps its accuracy (the low ones) early, and a level whose recipe
    collapsed rules out those above it before they are asked. The top comes last."""
    order = [0][: min(count, 1)]
    parts = 1
    while len(order) < count:
        parts *= 2
        for part in range(1, parts, 2):
            index = round(part * (count - 1) / parts)
            if index not in order:
                order.append(index)
        if parts > 2 * count:  # every index is some part's by now; the rest, ascending
            order += [i for i in range(count) if i not in order]
    return order


def uniform_candidates(
    levels: np.ndarray,
    options: Sequence[Option],
    asked: Sequence[tuple[int, int]],
    collapsed_at: dict[bool, int],
    on_front: set[int],
    front_levels: dict[bool, list[int]] | None = None,
    failed: Collection[int] = (),
) -> list[tuple[int, int]]:
    """(level index, option index) pairs not asked yet, best first (see the module docstring).
    ``asked``: the uniform recipes asked so far, as such pairs; ``collapsed_at``: per method
    (structured?), the lowest level index whose recipe collapsed; ``on_front``: options with a
    recipe on the current front; ``front_levels``: for neighbours of the front, per method the
    levels of its uniform recipes there; ``failed``: combos that collapsed with nothing pruned
    (none of their options is asked again)."""
    taken = set(asked)
    per_option = np.zeros(len(options), dtype=int)
    per_level = {False: np.zeros(len(levels), dtype=int), True: np.zeros(len(levels), dtype=int)}
    for level, option in taken:
        per_option[option] += 1
        per_level[options[option][1]][level] += 1
    position = {level: rank for rank, level in enumerate(bisection_order(len(levels)))}
    # Structured pruning removes whole channels: where unstructured collapsed, so does it.
    limits = {
        False: collapsed_at.get(False, len(levels)),
        True: min(collapsed_at.get(True, len(levels)), collapsed_at.get(False, len(levels))),
    }
    ranked = []
    for k, (combo, structured) in enumerate(options):
        if combo in failed:
            continue
        count = int(per_option[k])
        rounds = count + (OFF_FRONT if count and k not in on_front else 0)
        for level in range(min(limits[structured], len(levels))):
            if (level, k) in taken or (structured and levels[level] <= 0.0):
                continue  # nothing pruned: the same recipe as the unstructured one
            # Levels this method has fewest recipes at first, so that the options spread over
            # the range, then in bisection order.
            near = 0  # neighbours: nearest a front level of their method first
            if front_levels is not None:
                near = min((abs(level - j) for j in front_levels.get(structured, [])), default=99)
            key = (near, rounds, int(per_level[structured][level]), position[level], k)
            ranked.append((key, (level, k)))
    return [pair for _, pair in sorted(ranked)]


Propose = Callable[[np.ndarray, np.ndarray, int], "dict[str, Any] | None"]


class ThinStart:
    """Thin mode's uniform recipes (see the module docstring) over the ``levels`` (ascending,
    the constraints' feasible ones), for layer groups with highest amounts ``caps``,
    ``searched`` amounts and ``structurable`` methods."""

    def __init__(
        self,
        levels: np.ndarray,
        orders: Sequence[str],
        granularities: Sequence[str],
        budget: int,
        *,
        caps: np.ndarray,
        searched: np.ndarray,
        structurable: np.ndarray,
    ) -> None:
        self.levels, self.orders, self.granularities = levels, list(orders), list(granularities)
        self.options = uniform_options(orders, granularities, 2 if structurable.any() else 1)
        self.caps, self.searched, self.structurable = caps, searched, structurable
        skipped = sum(s for _, s in self.options) if levels[0] <= 0.0 else 0
        self.n_uniform = uniform_budget(
            budget, len(self.options), len(levels) * len(self.options) - skipped
        )
        self._option_index = {option: k for k, option in enumerate(self.options)}
        self.over = False  # all n_uniform asked

    def uniform(self, level: int, option: int) -> Row:
        combo, structured = self.options[option]
        amounts = np.minimum(self.levels[level], self.caps)
        return amounts, (self.structurable & structured).astype(float), combo

    def _combo(self, combo: int) -> int:
        """The combo a uniform recipe is counted as: prune_float's at the first granularity."""
        order, granularity = divmod(combo, len(self.granularities))
        return combo - granularity if self.orders[order] == FLOAT_ORDER else combo

    def uniform_of(self, row: Row) -> tuple[int, int] | None:
        """(level index, option index) of a uniform recipe's row, None for any other recipe."""
        amounts, structured, combo = row
        if not self.searched.any():
            return None
        level = float(amounts[self.searched].max())
        if not np.allclose(amounts[self.searched], np.minimum(level, self.caps[self.searched])):
            return None
        flags = structured[self.structurable] > 0
        if flags.size and flags.any() != flags.all():
            return None
        match = np.flatnonzero(np.isclose(self.levels, level))
        option = self._option_index.get((self._combo(combo), bool(flags.size and flags.all())))
        if not match.size or option is None:
            return None
        return int(match[0]), option

    def ask(
        self,
        directions: Sequence[StudyDirection],
        values: np.ndarray,
        finished: Encoded,
        running: Sequence[Row],
        propose: Propose,
        rng: np.random.Generator | None = None,
    ) -> dict[str, Any] | None:
        """The next uniform recipe, or None once ``n_uniform`` were asked (or none is left):
        the model's turn. ``values``: the finished trials' objectives, as Optuna has them (rows);
        ``finished``: their rows; ``propose``: the parameters of a recipe, or None where it was
        asked before or breaks a constraint."""
        neighbour = False
        if self.over:
            if not NEIGHBOUR or rng is None or rng.random() >= NEIGHBOUR:
                return None
            neighbour = True
        rows: list[Row] = [
            (finished.amounts[i], finished.structured[i], int(finished.combo[i]))
            for i in range(len(values))
        ]
        asked = [self.uniform_of(row) for row in (*rows, *running)]
        done = [pair for pair in asked if pair is not None]
        if len(done) >= self.n_uniform and not neighbour:
            self.over = True  # for good: the model's turn, and no need to read every row again
            return None
        signs = np.array([1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in directions])
        losses = np.array(values, dtype=float).reshape(len(values), len(signs)) * signs
        quality = [j for j, d in enumerate(directions) if d == StudyDirection.MAXIMIZE]
        fell = collapsed(-losses[:, quality[0]]) if quality else np.zeros(len(rows), bool)
        # A combo that collapsed with nothing pruned is out; its collapses bound no level.
        failed = {
            self.options[pair[1]][0]
            for i, pair in enumerate(asked[: len(rows)])
            if pair is not None and fell[i] and self.levels[pair[0]] <= 0.0
        }
        limits: dict[bool, int] = {}  # per method, the lowest level that collapsed
        for i, pair in enumerate(asked[: len(rows)]):
            if pair is not None and fell[i] and self.options[pair[1]][0] not in failed:
                method = self.options[pair[1]][1]
                limits[method] = min(limits.get(method, pair[0]), pair[0])
        best = [i for i in (front(losses) if rows else []) if not fell[i]]
        on_front = {pair[1] for i in best if (pair := asked[i]) is not None}
        fronts: dict[bool, list[int]] | None = None
        if neighbour:
            fronts = {False: [], True: []}
            for i in best:
                if (pair := asked[i]) is not None:
                    fronts[self.options[pair[1]][1]].append(pair[0])
        for level, option in uniform_candidates(
            self.levels, self.options, done, limits, on_front, fronts, failed
        ):
            params = propose(*self.uniform(level, option))
            if params is not None:
                return params
        if not neighbour:
            self.over = True  # every uniform recipe left was asked, is infeasible or collapsed
        return None
