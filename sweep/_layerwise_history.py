"""The finished trials a layerwise sampler models, kept as arrays from ask to ask.

A driver at hundreds of completions a second asks many times between the same finished trials
(a burst, when several slots free at once). Rebuilding every finished trial's row, values, recipe
key and feasibility at each ask is Python work proportional to the trials: at 1,000 trials it
cost the driver more than the model itself (issue 18). A completed trial stays completed, so
the set of finished trials changes exactly when their count does: between changes an ask reads
the arrays as they are, and a change reads only what is new.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from sweep._layerwise_model import Codec, Encoded

# A recipe's parameters, hashable. A frozenset keeps its hash once computed (a tuple hashes all
# its items again each time): the running trials' keys are gathered into a set at every ask.
Key = frozenset[tuple[str, Any]]


def recipe_key(params: dict[str, Any]) -> Key:
    return frozenset(params.items())


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
    scan's does not), in the order the sampler first saw them finished, as rows (``encoded``),
    objective values as Optuna has them (``values``) and, given ``feasible``, whether each meets
    the constraints. The model is fitted on a bootstrap sample of them: their order is immaterial,
    and keeping them in trial-number order cost a pass over every trial at each change. The
    arrays are extended when read (at a fit, every 1% of new trials), not at each new result: at
    300 layers a copy of the rows per result cost more than the ask."""

    def __init__(
        self, codec: Codec, groups: int, feasible: Callable[[dict[str, Any]], bool] | None
    ) -> None:
        self._codec, self._groups, self._feasible = codec, groups, feasible
        self.modeled: list[FrozenTrial] = []
        self._encoded = Encoded.of([], groups)
        self._values = np.zeros((0, 0))
        self._feasible_rows = np.zeros(0, dtype=bool)
        self._unread: list[FrozenTrial] = []  # modeled, not in the arrays yet
        self._taken: set[int] = set()  # ids of the COMPLETE trials read, modeled or not
        self._listed = 0  # trials seen in the study's list so far
        self._open: set[int] = set()  # places in that list of the trials not finished then
        self._finished_keys: set[Key] = set()
        self._running_keys: dict[int, Key] = {}
        self.waiting = 0  # WAITING trials (enqueued, not asked yet) at the last refresh

    @property
    def count(self) -> int:
        """COMPLETE trials read, modeled or not."""
        return len(self._taken)

    @property
    def encoded(self) -> Encoded:
        self._extend()
        return self._encoded

    @property
    def values(self) -> np.ndarray:
        self._extend()
        return self._values

    @property
    def feasible(self) -> np.ndarray:
        self._extend()
        return self._feasible_rows

    def refresh(self, trials: Sequence[FrozenTrial]) -> Asked:
        """Take in the study's trials (``study.get_trials(deepcopy=False)``: all of them, in
        number order) and return the recipes asked so far. Only the trials not finished when
        last seen are looked at again, and the ones added since (as Optuna finds its WAITING
        trials): filtering every trial by state twice per ask was the sampler's largest cost
        past a few thousand trials."""
        if trials and trials[-1].number != len(trials) - 1:
            # Not every trial listed by its number (no storage Optuna ships does this), so a
            # trial's place in the list may change: read them all.
            self._listed, self._open = 0, set()
        self._open.update(range(self._listed, len(trials)))
        self._listed = len(trials)
        finished, running = [], []
        self.waiting = 0
        for place in sorted(self._open):
            trial = trials[place]
            if trial.state == TrialState.RUNNING:
                running.append(trial)
            elif trial.state == TrialState.WAITING:
                self.waiting += 1
            elif trial.state.is_finished():
                self._open.discard(place)
                if trial.state == TrialState.COMPLETE and trial._trial_id not in self._taken:
                    finished.append(trial)
        self._take(finished)
        return self._asked(running)

    def _take(self, finished: Sequence[FrozenTrial]) -> None:
        for trial in finished:
            self._taken.add(trial._trial_id)
            params = trial.params
            if params:
                self._finished_keys.add(recipe_key(params))
            if "order" in params:
                self.modeled.append(trial)
                self._unread.append(trial)

    def _extend(self) -> None:
        if not self._unread:
            return
        trials, self._unread = self._unread, []
        rows = [self._codec.row(trial.params) for trial in trials]
        self._encoded = self._encoded.extended(Encoded.of(rows, self._groups))
        values = np.array([trial.values for trial in trials], dtype=float)
        self._values = np.vstack([self._values, values]) if self._values.size else values
        feasible = [self._feasible is None or self._feasible(t.params) for t in trials]
        self._feasible_rows = np.concatenate([self._feasible_rows, np.array(feasible, bool)])

    def _asked(self, running: Sequence[FrozenTrial]) -> Asked:
        """The finished trials' recipes and those of ``running`` (each running trial's key made
        once; the trial being asked has no parameters yet)."""
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
