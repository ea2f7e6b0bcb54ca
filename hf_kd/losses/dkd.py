"""Decoupled knowledge distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

from hf_kd.losses._common import check_positive, kl_divergence_rows, target_mask
from hf_kd.losses.base import DistillationLoss
from hf_kd.losses.registry import register_loss

DKD_TERMS = ("tckd", "nckd")


def decoupled_log_probs(
    scaled_logits: Tensor, labels: Tensor, target: Tensor
) -> tuple[Tensor, Tensor]:
    """The two distributions DKD compares, from one masked copy of the logits.

    Returns ``[log p_y, log(1 - p_y)]`` (``[N, 2]``, with ``p = softmax(z)``) and the
    log-softmax over the non-target classes (``[N, C]``, the target entry set to 0). The
    target is excluded exactly (``-inf``) and ``log(1 - p_y)`` is the log-sum-exp of the
    non-target logits minus that of the row, finite however confident the row. ``target`` is
    the one-hot mask of ``labels``.
    """
    non_target = scaled_logits.masked_fill(target, float("-inf"))
    non_target_normalizer = non_target.logsumexp(dim=1, keepdim=True)
    target_logit = scaled_logits.gather(1, labels[:, None])
    row_normalizer = torch.logaddexp(target_logit, non_target_normalizer)
    binary = torch.cat((target_logit, non_target_normalizer), dim=1) - row_normalizer
    non_target_log_probs = (non_target - non_target_normalizer).masked_fill(target, 0.0)
    return binary, non_target_log_probs


def decoupled_terms(
    student_scaled: Tensor,
    teacher_scaled: Tensor,
    labels: Tensor,
    sample_weights: Tensor | float,
    terms: Collection[str] = DKD_TERMS,
) -> dict[str, Tensor]:
    """``term = (1/N) sum_i w_i KL_i`` for TCKD and NCKD on already temperature-scaled logits.

    DKD passes ``logits / T`` and ``w = T^2``; NormKD+DKD passes ``logits / T_i`` and the
    per-sample ``w_i = T_t,i^2``. Only the requested ``terms`` are computed. In NCKD both
    target entries are 0, so the target contributes ``exp(0) (0 - 0) = 0`` to the KL.
    """
    target = target_mask(labels, student_scaled.shape[1])
    teacher_binary, teacher_non_target = decoupled_log_probs(teacher_scaled, labels, target)
    student_binary, student_non_target = decoupled_log_probs(student_scaled, labels, target)
    computed = {}
    if "tckd" in terms:
        tckd_rows = kl_divergence_rows(teacher_binary, student_binary)
        computed["tckd"] = (sample_weights * tckd_rows).mean()
    if "nckd" in terms:
        nckd_rows = kl_divergence_rows(teacher_non_target, student_non_target)
        computed["nckd"] = (sample_weights * nckd_rows).mean()
    return computed


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
