"""A task that takes a while to build its model and says so (as a baseline's training does)."""

from __future__ import annotations

import time

from torch import nn

from trials import report_phase
from trials.tasks.synthetic import SyntheticTask


class SlowToBuild(SyntheticTask):
    def build_model(self) -> nn.Module:
        report_phase("warming up the user's model")
        time.sleep(1.5)  # long enough for the driver, which looks twice a second, to see it
        return super().build_model()


def make() -> SlowToBuild:
    return SlowToBuild(n_layers=2)
