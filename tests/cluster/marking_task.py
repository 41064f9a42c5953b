"""The synthetic task, leaving a marker file (named by its Ray node) when a trial starts: tests
then know which node to kill while a trial really runs there."""

from __future__ import annotations

from pathlib import Path

import ray
from torch import nn

from trials.tasks.synthetic import SyntheticTask


class MarkingTask(SyntheticTask):
    def __init__(self, marker_dir: str, trial_seconds: float = 0.0) -> None:
        super().__init__(trial_seconds=trial_seconds)
        self.marker_dir = Path(marker_dir)

    def build_model(self) -> nn.Module:
        context = ray.get_runtime_context() if ray.is_initialized() else None
        # Only trials mark (the sweep's describe step builds the model too).
        if context is not None and "execute_trial" in (context.get_task_function_name() or ""):
            (self.marker_dir / context.get_node_id()).touch()
        return super().build_model()


def make(marker_dir: str, trial_seconds: float = 0.0) -> MarkingTask:
    return MarkingTask(marker_dir, trial_seconds)
