"""DeiT's hard distillation (Touvron et al., ICML 2021, arXiv 2012.12877)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hf_kd.losses.base import DistillationLoss
from hf_kd.losses.registry import register_loss


def hard_distillation_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``L_hard = (1/N) sum_i CE(s_i, argmax_c t_ic)``: cross-entropy against the teacher's
    top-1 class, averaged over the batch."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(dim=1), reduction="mean")


@register_loss("hard")
class HardDistillationLoss(DistillationLoss):
    """Hard distillation, Touvron et al., "Training data-efficient image transformers &
    distillation through attention" (ICML 2021, arXiv 2012.12877), their Eq. 3.

    ``L_hard = (1/N) sum_i CE(s_i, y_t,i)`` with ``y_t,i = argmax_c t_ic``, the teacher's
    decision used as a label (no temperature). DeiT trains its distillation token's head with
    it (``hard`` in ``facebookresearch/deit``'s ``DistillationLoss``), with
    ``0.5 * CE(z_cls, y) + 0.5 * L_hard(z_dist, t)``; on a student without a distillation
    token it trains the single head. The gradient is ``(1/N) (softmax(s_i) - onehot(y_t,i))``
    and no gradient reaches the teacher (argmax). Term: ``hard``.
    """

    term_names = ("hard",)

    def compute_terms(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: float | None
    ) -> dict[str, Tensor]:
        return {"hard": hard_distillation_loss(student_logits, teacher_logits)}
