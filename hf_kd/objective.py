"""The training objective: how cross-entropy and the distillation loss are combined.

``total = ce_weight * CE(student_logits, y) + kd_weight * w(epoch) * distillation_loss``
(spec section A), with the outer warm-up ``w`` of DKD, RLD and NormKD+DKD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

WarmupSchedule = Literal["epoch", "linear"]
WARMUP_SCHEDULES: tuple[str, ...] = ("epoch", "linear")


@dataclass(frozen=True)
class DistillationObjective:
    """The resolved objective of one run: method, weights, warm-up and loss hyperparameters.

    Built by :meth:`hf_kd.arguments.DistillationArguments.resolve_objective`.
    """

    method: str
    ce_weight: float
    kd_weight: float
    warmup_epochs: float
    warmup_schedule: WarmupSchedule = "epoch"
    loss_kwargs: dict[str, object] = field(default_factory=dict)

    def kd_warmup_factor(self, epoch: float) -> float:
        """The warm-up factor ``w`` at the 1-based, possibly fractional, ``epoch``.

        * ``"epoch"`` (official code): ``w = min(floor(epoch) / warmup_epochs, 1)``, a step
          function that is ``1 / warmup_epochs`` during the whole first epoch and 1 from
          epoch ``warmup_epochs`` on.
        * ``"linear"``: ``w = min(epoch / warmup_epochs, 1)``, the same ramp interpolated per
          optimizer step (equal to the step function at the start of each epoch).

        ``warmup_epochs == 0`` means no warm-up: ``w = 1``.
        """
        if self.warmup_epochs <= 0:
            return 1.0
        if self.warmup_schedule == "epoch":
            epoch = math.floor(epoch)
        return min(epoch / self.warmup_epochs, 1.0)
