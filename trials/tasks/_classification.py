"""A base for classification tasks held in memory: splits, loaders, a cached trained baseline."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from trials._task import Batch, cached_state_dict, report_phase, seed_everything


def _batches(
    inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, shuffle_seed: int | None
) -> Iterator[Batch]:
    order = torch.arange(len(inputs))
    if shuffle_seed is not None:
        order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(shuffle_seed))
    for start in range(0, len(inputs), batch_size):
        index = order[start : start + batch_size]
        yield inputs[index], targets[index]


class ClassificationTask:
    """Subclass and set ``name``, ``settings``, the three splits, and :meth:`create_model`.

    The baseline is trained with Adam and early stopping on the calibration split's loss (the
    validation split stays untouched), then cached on disk by task name and settings.
    """

    name = "classification"
    batch_size = 64
    latency_batch_size = 64
    baseline_max_epochs = 60
    baseline_patience: int | None = 6
    baseline_min_delta = 1e-4
    baseline_lr = 3e-3

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._epoch = 0
        self._state: dict[str, torch.Tensor] | None = None
        self.x_train = self.y_train = torch.empty(0)
        self.x_calib = self.y_calib = torch.empty(0)
        self.x_val = self.y_val = torch.empty(0)

    # -- what subclasses provide -------------------------------------------------------------------
    def create_model(self) -> nn.Module:
        raise NotImplementedError

    @property
    def settings(self) -> dict[str, Any]:
        """Everything that changes the trained weights (the baseline cache key)."""
        return {"seed": self.seed}

    # -- Task protocol -----------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        if self._state is None:
            key = {"task": self.name, "version": 1, **self.settings}
            self._state = cached_state_dict(key, self._train_baseline)
        model = self.create_model()
        model.load_state_dict(copy.deepcopy(self._state))
        return model.eval()

    def train_batches(self) -> Iterator[Batch]:
        self._epoch += 1  # a new shuffle every epoch, reproducible from the seed
        return _batches(self.x_train, self.y_train, self.batch_size, self.seed * 1000 + self._epoch)

    def calibration_batches(self) -> Iterator[Batch]:
        return _batches(self.x_calib, self.y_calib, self.batch_size, None)

    def validation_batches(self) -> Iterator[Batch]:
        return _batches(self.x_val, self.y_val, 256, None)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        model.eval()
        correct = total = 0
        loss_sum = 0.0
        for inputs, targets in self.validation_batches():
            inputs, targets = inputs.to(device), targets.to(device)
            output = model(inputs)
            loss_sum += float(F.cross_entropy(output, targets, reduction="sum"))
            correct += int((output.argmax(dim=1) == targets).sum())
            total += len(targets)
        return {"accuracy": correct / max(total, 1), "val_loss": loss_sum / max(total, 1)}

    def example_input(self) -> torch.Tensor:
        return self.x_val[: self.latency_batch_size].clone()

    # -- baseline ----------------------------------------------------------------------------------
    def _baseline_schedule(
        self, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """A learning-rate schedule stepped once per batch (none: a constant rate)."""
        return None

    def _train_baseline(self) -> nn.Module:
        """Adam over ``baseline_max_epochs``, keeping the epoch with the lowest calibration loss;
        stops after ``baseline_patience`` epochs without an improvement of
        ``baseline_min_delta`` (``None``: runs every epoch)."""
        seed_everything(self.seed)
        model = self.create_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=self.baseline_lr)
        schedule = self._baseline_schedule(optimizer)
        self._epoch = 0
        best_loss, best_state, waited = math.inf, copy.deepcopy(model.state_dict()), 0
        for epoch in range(self.baseline_max_epochs):
            report_phase(
                f"training the fp32 baseline of {self.name}: epoch {epoch + 1} of at most "
                f"{self.baseline_max_epochs} (once: cached for next time)"
            )
            model.train()
            for inputs, targets in self.train_batches():
                optimizer.zero_grad(set_to_none=True)
                self.loss(model(inputs), targets).backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
            loss = self._calibration_loss(model)
            if loss < best_loss - self.baseline_min_delta:
                best_loss, best_state, waited = loss, copy.deepcopy(model.state_dict()), 0
            else:
                waited += 1
                if self.baseline_patience is not None and waited >= self.baseline_patience:
                    break
        self._epoch = 0  # fine-tuning then sees the same draws whether trained here or cached
        model.load_state_dict(best_state)
        return model.eval()

    @torch.no_grad()
    def _calibration_loss(self, model: nn.Module) -> float:
        model.eval()
        total, count = 0.0, 0
        for inputs, targets in self.calibration_batches():
            total += float(F.cross_entropy(model(inputs), targets, reduction="sum"))
            count += len(targets)
        return total / max(count, 1)
