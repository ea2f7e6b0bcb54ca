"""Decoupled knowledge distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

from collections.abc import Collection

from torch import Tensor

from hf_kd.losses._common import (
    binary_log_probs,
    check_positive,
    kl_divergence_rows,
    kl_divergence_rows_excluding,
    target_mask,
)
from hf_kd.losses.base import DistillationLoss
from hf_kd.losses.registry import register_loss

DKD_TERMS = ("tckd", "nckd")


def target_class_kl_rows(student_scaled: Tensor, teacher_scaled: Tensor, labels: Tensor) -> Tensor:
    """TCKD per sample: ``KL(b_t,i || b_s,i)`` of the binary target / non-target split, ``[N]``."""
    return kl_divergence_rows(
        binary_log_probs(teacher_scaled, labels), binary_log_probs(student_scaled, labels)
    )


def non_target_kl_rows(student_scaled: Tensor, teacher_scaled: Tensor, labels: Tensor) -> Tensor:
    """NCKD per sample: KL between the softmaxes over the non-target classes only, ``[N]``."""
    target = target_mask(labels, student_scaled.shape[1])
    return kl_divergence_rows_excluding(teacher_scaled, student_scaled, target)


_TERM_ROWS = {"tckd": target_class_kl_rows, "nckd": non_target_kl_rows}


def decoupled_terms(
    student_scaled: Tensor,
    teacher_scaled: Tensor,
    labels: Tensor,
    sample_weights: Tensor | float,
    terms: Collection[str] = DKD_TERMS,
) -> dict[str, Tensor]:
    """``term = (1/N) sum_i w_i KL_i`` for TCKD and NCKD on already temperature-scaled logits.

    DKD passes ``logits / T`` and ``w = T^2``; NormKD+DKD passes ``logits / T_i`` and the
    per-sample ``w_i = T_t,i^2``. Only the requested ``terms`` are computed.
    """
    return {
        name: (sample_weights * _TERM_ROWS[name](student_scaled, teacher_scaled, labels)).mean()
        for name in terms
    }


def dkd_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float,
    terms: Collection[str] = DKD_TERMS,
) -> dict[str, Tensor]:
    """DKD's ``tckd`` and ``nckd``, each ``T^2 (1/N) sum_i KL_i`` at temperature ``T``."""
    return decoupled_terms(
        student_logits / temperature,
        teacher_logits.detach() / temperature,
        labels,
        temperature**2,
        terms,
    )


@register_loss("dkd")
class DKDLoss(DistillationLoss):
    """Decoupled knowledge distillation: Zhao, Cui, Song, Qiu and Liang, "Decoupled Knowledge
    Distillation", CVPR 2022 (arXiv 2203.08679); official code megvii-research/mdistiller.

    With ``p = softmax(z / T)``, ``b = [p_y, sum_{c != y} p_c]`` the binary target /
    non-target split and ``q`` the softmax over the non-target classes only::

        TCKD = T^2 (1/N) sum_i KL(b_t,i || b_s,i)
        NCKD = T^2 (1/N) sum_i KL(q_t,i || q_s,i)
        L_DKD = alpha * TCKD + beta * NCKD

    Terms: ``tckd`` and ``nckd`` (weights ``alpha`` and ``beta``). The outer warm-up
    ``min(epoch / 20, 1)`` of the official code is the trainer's job (see the presets).

    Deliberate numerical fixes over the official code:

    * The target class is excluded exactly from NCKD, where the official code subtracts
      1000 from the scaled target logit; the two agree unless the scaled target margin
      approaches 1000, where the official NCKD leaks target mass.
    * The binary log-probabilities of TCKD use log-sum-exp over the two groups instead of
      ``log`` of summed probabilities, so a confident float32 student gives a finite value.
    """

    term_names = DKD_TERMS
    min_classes = 3

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        *,
        logit_standardization: bool = False,
        check_values: bool = True,
    ):
        super().__init__(logit_standardization=logit_standardization, check_values=check_values)
        self.temperature = check_positive("temperature", temperature)
        self.alpha = check_positive("alpha", alpha, allow_zero=True)
        self.beta = check_positive("beta", beta, allow_zero=True)

    def term_weights(self, epoch: float | None) -> dict[str, float]:
        return {"tckd": self.alpha, "nckd": self.beta}

    def compute_terms(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: float | None
    ) -> dict[str, Tensor]:
        return dkd_terms(
            student_logits, teacher_logits, labels, self.temperature, self.active_terms(epoch)
        )
