"""The finished trials a layerwise sampler models, kept as arrays from ask to ask.

A driver at hundreds of completions a second asks many times between the same finished trials
(a burst, when several slots free at once). Rebuilding every finished trial's row, values, recipe
key and feasibility at each ask is Python work proportional to the trials: at 1,000 trials it
cost the driver more than the model itself (issue 18). A completed trial stays completed, so
the set of finished trials changes exactly when their count does: between changes an ask reads
the arrays as they are, and a change reads only what is new, then reorders the rows once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial

from sweep._layerwise_model import Codec, Encoded

Key = tuple[tuple[str, Any], ...]  # a recipe's parameters, hashable


def recipe_key(params: dict[str, Any]) -> Key:
    return tuple(sorted(params.items()))


@dataclass(frozen=True)
class Asked:
    """The recipes of every finished and running trial: a proposal equal to one is not asked
    again. Two sets side by side: joining them copied every finished trial's key at each ask."""

    finished: set[Key]
    running: set[Key]

    def __contains__(self, key: object) -> bool:
        return key in self.finished or key in self.running


class History:
    """The finished trials that have a recipe of the sampler's space (a re-run recipe from a
    scan's does not), in trial-number order, as rows (``encoded``), objective values as Optuna
    has them (``values``) and, given ``feasible``, whether each meets the constraints."""

    def __init__(
        self, codec: Codec, groups: int, feasible: Callable[[dict[str, Any]], bool] | None
    ) -> None:
        self._codec, self._groups, self._feasible = codec, groups, feasible
        self.count = 0  # finished trials seen, modeled or not
        self.modeled: list[FrozenTrial] = []
        self.encoded = Encoded.of([], groups)
        self.values = np.zeros((0, 0))
        self.feasible = np.zeros(0, dtype=bool)
        self._finished_keys: set[Key] = set()
        self._running_keys: dict[int, Key] = {}
        self._taken: set[int] = set()  # ids of the finished trials read
        # Every modeled trial's row, in the order first seen, and each trial's index in them.
        self._index: dict[int, int] = {}
        self._rows = Encoded.of([], groups)
        self._values: list[Sequence[float]] = []
        self._feasible_rows: list[bool] = []

    def update(self, finished: Sequence[FrozenTrial]) -> bool:
        """Take in ``finished`` (every COMPLETE trial, in number order); whether it changed."""
        if len(finished) == self.count:
            return False
        self.count = len(finished)
        added = []
        for trial in finished:
            if trial._trial_id in self._taken:
                continue
            self._taken.add(trial._trial_id)
            params = trial.params
            if params:
                self._finished_keys.add(recipe_key(params))
            if "order" in params:
                self._index[trial._trial_id] = len(self._values)
                added.append(self._codec.row(params))
                self._values.append(trial.values)
                self._feasible_rows.append(self._feasible is None or self._feasible(params))
        if added:
            self._rows = self._rows.extended(Encoded.of(added, self._groups))
        self.modeled = [t for t in finished if t._trial_id in self._index]
        order = np.array([self._index[t._trial_id] for t in self.modeled], dtype=int)
        self.encoded = self._rows.take(order)
        self.values = np.array(self._values, dtype=float)[order] if self._values else self.values
        self.feasible = np.array(self._feasible_rows, dtype=bool)[order]
        return True

    def asked(self, running: Sequence[FrozenTrial]) -> Asked:
        """The recipes asked so far: the finished trials' and those of ``running`` (each
        running trial's key made once; the trial being asked has no parameters yet)."""
        keys: dict[int, Key] = {}
        for trial in running:
            params = trial.params
            if not params:
                continue
            key = self._running_keys.get(trial._trial_id)
            if key is None or len(key) != len(params):
                key = recipe_key(params)
            keys[trial._trial_id] = key
        self._running_keys = keys
        return Asked(self._finished_keys, set(keys.values()))
