"""NormKD: per-sample temperatures from the logit std (Chi et al., arXiv 2308.00520)."""

from __future__ import annotations

from collections.abc import Collection

import torch.nn.functional as F
from torch import Tensor

from hf_kd.losses._common import STD_EPS, centred_and_std, check_positive, kl_divergence_rows
from hf_kd.losses.base import DistillationLoss
from hf_kd.losses.dkd import DKD_TERMS, decoupled_terms
from hf_kd.losses.registry import register_loss


def normalized_temperatures(logits: Tensor, t_norm: float) -> Tensor:
    """``T_i = t_norm * max(std_c(z_i), 1e-7)`` with the unbiased std, ``[N, 1]``.

    The official code has no floor, so a constant logit row gives ``T_i = 0`` and a NaN
    loss; the floor keeps it finite. Gradients flow through the std.
    """
    _, std = centred_and_std(logits)
    return t_norm * std.clamp_min(STD_EPS)


def normkd_loss(student_logits: Tensor, teacher_logits: Tensor, t_norm: float) -> Tensor:
    """``L = (1/N) sum_i T_t,i^2 KL(softmax(t_i / T_t,i) || softmax(s_i / T_s,i))``."""
    teacher_logits = teacher_logits.detach()
    teacher_temperature = normalized_temperatures(teacher_logits, t_norm)
    student_temperature = normalized_temperatures(student_logits, t_norm)
    kl_rows = kl_divergence_rows(
        F.log_softmax(teacher_logits / teacher_temperature, dim=1),
        F.log_softmax(student_logits / student_temperature, dim=1),
    )
    return (teacher_temperature.squeeze(1) ** 2 * kl_rows).mean()


def normkd_dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    t_norm: float,
    terms: Collection[str] = DKD_TERMS,
) -> dict[str, Tensor]:
    """DKD's ``tckd`` and ``nckd`` on ``s / T_s,i`` and ``t / T_t,i``, each sample's KL
    weighted by ``T_t,i^2``."""
    teacher_logits = teacher_logits.detach()
    teacher_temperature = normalized_temperatures(teacher_logits, t_norm)
    student_temperature = normalized_temperatures(student_logits, t_norm)
    return decoupled_terms(
        student_logits / student_temperature,
        teacher_logits / teacher_temperature,
        labels,
        teacher_temperature.squeeze(1) ** 2,
        terms,
    )


@register_loss("normkd")
class NormKDLoss(DistillationLoss):
    """NormKD: Chi, Zheng, Luo, Zhou, Yang and Wang, "NormKD: Normalized Logits for Knowledge
    Distillation", arXiv 2308.00520 (2023); code gizi1/NormKD.

    Each sample gets its own temperature from the unbiased std of its logits, separately for
    the student and the teacher, and its KL is weighted by the teacher's temperature squared::

        T_t,i = t_norm * std_c(t_i)        T_s,i = t_norm * std_c(s_i)
        L = (1/N) sum_i T_t,i^2 KL(softmax(t_i / T_t,i) || softmax(s_i / T_s,i))

    Term: ``normkd``. Deliberate numerical fix: the std is floored at 1e-7, so a constant
    logit row gives a finite loss where the official code gives NaN.
    """

    term_names = ("normkd",)

    def __init__(
        self,
        t_norm: float = 2.0,
        *,
        logit_standardization: bool = False,
        check_values: bool = True,
    ):
        super().__init__(logit_standardization=logit_standardization, check_values=check_values)
        self.t_norm = check_positive("t_norm", t_norm)

    def compute_terms(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: float | None
    ) -> dict[str, Tensor]:
        return {"normkd": normkd_loss(student_logits, teacher_logits, self.t_norm)}


@register_loss("normkd_dkd")
class NormKDDKDLoss(DistillationLoss):
    """NormKD + DKD: Chi et al., arXiv 2308.00520 (2023); code gizi1/NormKD.

    DKD (Zhao et al., CVPR 2022) computed on ``s / T_s,i`` and ``t / T_t,i`` with the NormKD
    temperatures instead of a global ``T``; each sample's TCKD and NCKD KL is weighted by
    ``T_t,i^2`` before the batch mean::

        TCKD = (1/N) sum_i T_t,i^2 KL(b_t,i || b_s,i)
        NCKD = (1/N) sum_i T_t,i^2 KL(q_t,i || q_s,i)
        L = alpha * TCKD + beta * NCKD

    Terms: ``tckd`` and ``nckd``. The outer warm-up is the trainer's job. Deliberate
    numerical fixes: the std floor of NormKD, and DKD's exact target exclusion and
    log-sum-exp binary log-probabilities (see :class:`~hf_kd.losses.dkd.DKDLoss`).
    """

    term_names = DKD_TERMS
    min_classes = 3

    def __init__(
        self,
        t_norm: float = 2.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        *,
        logit_standardization: bool = False,
        check_values: bool = True,
    ):
        super().__init__(logit_standardization=logit_standardization, check_values=check_values)
        self.t_norm = check_positive("t_norm", t_norm)
        self.alpha = check_positive("alpha", alpha, allow_zero=True)
        self.beta = check_positive("beta", beta, allow_zero=True)

    def term_weights(self, epoch: float | None) -> dict[str, float]:
        return {"tckd": self.alpha, "nckd": self.beta}

    def compute_terms(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: float | None
    ) -> dict[str, Tensor]:
        return normkd_dkd_terms(
            student_logits, teacher_logits, labels, self.t_norm, self.active_terms(epoch)
        )
