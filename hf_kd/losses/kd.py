"""Vanilla knowledge distillation (Hinton, Vinyals and Dean, 2015)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hf_kd.losses._common import check_positive, kl_divergence_rows
from hf_kd.losses.base import DistillationLoss
from hf_kd.losses.registry import register_loss


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``L_KD = T^2 (1/N) sum_i KL(softmax(t_i/T) || softmax(s_i/T))``."""
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    return temperature**2 * kl_divergence_rows(teacher_log_probs, student_log_probs).mean()


@register_loss("kd")
class KDLoss(DistillationLoss):
    """Knowledge distillation, Hinton et al., "Distilling the Knowledge in a Neural Network"
    (arXiv 1503.02531, 2015).

    ``L_KD = T^2 * (1/N) * sum_i KL(softmax(t_i / T) || softmax(s_i / T))``, with the KL
    summed over classes and averaged over the batch. Its gradient is
    ``dL/ds_i = (T / N) (q_s,i - p_t,i)``. Term: ``kd``.
    """

    term_names = ("kd",)

    def __init__(
        self,
        temperature: float = 4.0,
        *,
        logit_standardization: bool = False,
        check_values: bool = True,
    ):
        super().__init__(logit_standardization=logit_standardization, check_values=check_values)
        self.temperature = check_positive("temperature", temperature)

    def compute_terms(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: float | None
    ) -> dict[str, Tensor]:
        return {"kd": kd_loss(student_logits, teacher_logits, self.temperature)}
