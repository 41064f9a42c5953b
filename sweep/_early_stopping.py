"""Early stopping of hopeless trials: Optuna's pruners, judged in the driver.

Optuna's pruners work on single-objective studies only, and the sweep's study has several
objectives: a shadow study holds each trial's intermediate validation accuracy and decides.
Trials report to the TrialMonitor actor; the driver drains the reports, asks the shadow study,
and hands each decision back through the actor, which the trial polls between epochs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
import ray

from sweep._config import SweepConfig
from trials import TrialResult


def _shadow_study(config: SweepConfig) -> optuna.Study | None:
    settings = config.early_stopping
    pruner: optuna.pruners.BasePruner
    if settings.pruner == "none":
        return None
    if settings.pruner == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=settings.startup_trials, n_warmup_steps=settings.warmup_steps
        )
    else:
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_early_stopping_rate=0)
    return optuna.create_study(direction="maximize", pruner=pruner)


class EarlyStopping:
    """The configured pruner (``early_stopping``), or nothing to do with ``pruner: none``."""

    def __init__(self, config: SweepConfig, monitor: Any) -> None:
        self._name = config.name
        self._monitor = monitor
        self._study = _shadow_study(config)

    @property
    def enabled(self) -> bool:
        return self._study is not None

    def ask(self) -> optuna.trial.Trial | None:
        """A new trial's twin in the shadow study (None: early stopping is off)."""
        return self._study.ask() if self._study is not None else None

    def tell(self, shadow: optuna.trial.Trial | None, result: TrialResult) -> None:
        if shadow is None or self._study is None:
            return
        if result.state == "COMPLETE":
            self._study.tell(shadow, result.metrics["accuracy"])
        else:
            self._study.tell(shadow, state=optuna.trial.TrialState[result.state])

    def judge(self, shadow_of: Callable[[int], optuna.trial.Trial | None]) -> None:
        """Judge every report the trials sent since the last call. ``shadow_of`` gives a running
        trial's twin (None: the trial finished meanwhile, nothing to stop)."""
        if self._study is None:
            return
        for number, step, value in ray.get(self._monitor.drain.remote(self._name)):
            shadow = shadow_of(number)
            if shadow is None:
                self._monitor.decide.remote(self._name, number, step, False)
                continue
            shadow.report(value, step)
            self._monitor.decide.remote(self._name, number, step, shadow.should_prune())
