"""A user's own model from torchvision: MobileNetV3-Small on the procedural ``shapes`` images.

Copy this folder and run ``sweep launch sweep.yaml`` inside it. The config names this file by
its path, ``task: mobilenet_task.py:make_task`` (relative to where you run ``sweep``), with
``task_settings: {width_mult: 0.5}``: widths below torchvision's 1.0 train and compress faster on
a CPU. The fp32 baseline (12 epochs of 4,000 images, one thread) took 91 s and reached 62%
validation accuracy at 0.5, 63 s and 53% at 0.25: MobileNetV3's five stride-2 stages leave a
32x32 image little room, where the built-in ``shapes`` model reaches about 90%.

The only code here is the model choice: the data, the training of the fp32 baseline (cached) and
the evaluation come from the built-in ``resnet`` task, which draws ``shapes``' images as three
equal channels, as an RGB model takes them. Ten classes, because that is what those images have
(five shapes times two textures).

The model is ``torchvision.models.mobilenet_v3_small(num_classes=10, width_mult=...)`` where
torchvision imports. Where it does not, the same network comes from ``mobilenet_v3.py`` beside
this file (plain ``torch.nn``, torchvision's module names and shapes, and the same weights from
the same seed), so state_dicts, cached baselines and recipes (which name layers such as
``features.4.block.0.0``) carry over from one to the other. torchvision does not import beside a
torch build it was not built for: its wheels carry compiled operators, and a CUDA wheel of
torchvision next to a CPU-only torch raises ``RuntimeError: operator torchvision::nms does not
exist`` at import. Only that failure and an ImportError (torchvision missing, or a library it
loads) fall back; any other error in torchvision is raised, not hidden.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from trials.tasks.resnet import ResnetTask
from trials.tasks.shapes import CLASSES


@functools.cache  # a failed import is not retried at every model built
def _torchvision_model() -> Callable[..., nn.Module] | None:
    """torchvision's ``mobilenet_v3_small``, or ``None`` where torchvision is missing or its
    compiled operators do not load beside this torch."""
    try:
        from torchvision.models import mobilenet_v3_small
    except ImportError:
        return None
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):  # its operators failed to register: nothing else
            raise
        return None
    return mobilenet_v3_small


def model_source() -> str:
    """Where the model comes from on this machine: ``torchvision`` or ``mobilenet_v3.py``."""
    return "mobilenet_v3.py" if _torchvision_model() is None else "torchvision"


class MobilenetTask(ResnetTask):
    """``resnet``'s data and training with MobileNetV3-Small as the model. Settings: ``seed``,
    ``width_mult`` (1.0: torchvision's default), the split sizes of ``shapes`` (``n_train`` is
    drawn afresh every epoch) and ``epochs``, the fp32 baseline's training epochs (one-cycle
    schedule, best epoch on the calibration split kept)."""

    name = "mobilenet_v3_small"

    def __init__(
        self,
        seed: int = 0,
        width_mult: float = 1.0,
        n_train: int = 4000,
        n_calibration: int = 1000,
        n_validation: int = 2000,
        epochs: int = ResnetTask.baseline_max_epochs,
    ) -> None:
        if width_mult <= 0:
            raise ValueError(f"task_settings: width_mult {width_mult} must be positive")
        if epochs < 1:
            raise ValueError(f"task_settings: epochs {epochs} must be at least 1")
        super().__init__(
            seed=seed, n_train=n_train, n_calibration=n_calibration, n_validation=n_validation
        )
        self.width_mult = float(width_mult)
        self.baseline_max_epochs = epochs  # read by the baseline's training and its cache key

    @property
    def settings(self) -> dict[str, Any]:
        # ResNet's own width and blocks do not shape this model: keep them out of the cache key.
        inherited = {k: v for k, v in super().settings.items() if k not in ("width", "blocks")}
        return {**inherited, "width_mult": self.width_mult}

    def create_model(self) -> nn.Module:
        factory = _torchvision_model()
        if factory is None:
            # The task's folder is importable on the driver and on every worker (see README).
            from mobilenet_v3 import mobilenet_v3_small

            factory = mobilenet_v3_small
        return factory(num_classes=len(CLASSES), width_mult=self.width_mult)


# The task factory: ``task_settings`` are the class's keyword arguments (see MobilenetTask).
make_task = MobilenetTask
