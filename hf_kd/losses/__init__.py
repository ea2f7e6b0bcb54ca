"""The loss library: every registered logit-distillation loss and its presets.

``build_loss(name, **hyperparameters)`` builds a loss; ``available_losses()`` lists them.
Each loss is called as ``loss_fn(student_logits, teacher_logits, labels, *, epoch=None)``
and returns a :class:`LossOutput`.
"""

from hf_kd.losses import dkd, hard, kd, mcld, normkd, rld  # noqa: F401  (registers the losses)
from hf_kd.losses.base import DistillationLoss, LossOutput
from hf_kd.losses.presets import Preset, available_presets, preset
from hf_kd.losses.registry import available_losses, build_loss, register_loss

__all__ = [
    "DistillationLoss",
    "LossOutput",
    "Preset",
    "available_losses",
    "available_presets",
    "build_loss",
    "preset",
    "register_loss",
]
