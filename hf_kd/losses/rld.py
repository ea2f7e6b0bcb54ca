"""Refined logit distillation (Sun et al., arXiv 2408.07703)."""

from __future__ import annotations

from collections.abc import Collection

from torch import Tensor

from hf_kd.losses._common import (
    binary_log_probs,
    check_positive,
    kl_divergence_rows,
    kl_divergence_rows_excluding,
)
from hf_kd.losses.base import DistillationLoss
from hf_kd.losses.registry import register_loss

RLD_TERMS = ("scd", "mcd")


def sample_confidence_term(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha_temperature: float
) -> Tensor:
    """SCD: ``T_a^2 (1/N) sum_i KL(b_t,i || b_s,i)``.

    The teacher's binary split is its own top-1 class against the rest (its confidence),
    the student's is the ground-truth class against the rest.
    """
    teacher_top1 = teacher_logits.argmax(dim=1)
    teacher_binary = binary_log_probs(teacher_logits / alpha_temperature, teacher_top1)
    student_binary = binary_log_probs(student_logits / alpha_temperature, labels)
    return alpha_temperature**2 * kl_divergence_rows(teacher_binary, student_binary).mean()


def masked_correlation_term(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float
) -> Tensor:
    """MCD: ``T^2 (1/N) sum_i KL(softmax(t~_i / T) || softmax(s~_i / T))``.

    ``~`` removes, in both rows, every class the teacher ranks at or above the target
    (``t_i,c >= t_i,y``, the target included). A row where that is every class contributes
    exactly 0 and no gradient.
    """
    target_logit = teacher_logits.gather(1, labels[:, None])
    at_or_above_target = teacher_logits >= target_logit
    kl_rows = kl_divergence_rows_excluding(
        teacher_logits / temperature, student_logits / temperature, at_or_above_target
    )
    return temperature**2 * kl_rows.mean()


def rld_terms(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float,
    alpha_temperature: float,
    terms: Collection[str] = RLD_TERMS,
) -> dict[str, Tensor]:
    """RLD's ``scd`` (at ``alpha_temperature``) and ``mcd`` (at ``temperature``)."""
    teacher_logits = teacher_logits.detach()
    computed = {}
    if "scd" in terms:
        computed["scd"] = sample_confidence_term(
            student_logits, teacher_logits, labels, alpha_temperature
        )
    if "mcd" in terms:
        computed["mcd"] = masked_correlation_term(
            student_logits, teacher_logits, labels, temperature
        )
    return computed


@register_loss("rld")
class RLDLoss(DistillationLoss):
    """Refined logit distillation: Sun, Li, Wang, Zhou, Chen and Zhao, "Knowledge
    Distillation with Refined Logits", arXiv 2408.07703 (2024); official code zju-SWJ/RLD.

    With ``k_i = argmax_c t_i,c`` and ``M_i = {c : t_i,c >= t_i,y_i}`` (the target and every
    class the teacher ranks above it)::

        SCD = T_a^2 (1/N) sum_i KL([p_t,k, 1 - p_t,k] || [p_s,y, 1 - p_s,y])   at T_a
        MCD = T^2 (1/N) sum_i KL(softmax(t_i / T) || softmax(s_i / T)) over c not in M_i
        L_RLD = alpha * SCD + beta * MCD

    Terms: ``scd`` and ``mcd`` (weights ``alpha`` and ``beta``). The outer warm-up is the
    trainer's job. ``alpha_temperature`` is 4 with the README's ``--same-t`` (the preset),
    1 in the official config defaults.

    Numerics: the binary log-probabilities of SCD use log-sum-exp (the official code takes
    ``log`` of summed probabilities, ``-inf`` for a confident float32 student). MCD removes
    the masked classes exactly, which equals the official ``-1e9`` replacement: a row whose
    every class is masked contributes 0 and no gradient.
    """

    term_names = RLD_TERMS
    min_classes = 3

    def __init__(
        self,
        temperature: float = 4.0,
        alpha_temperature: float = 4.0,
        alpha: float = 1.0,
        beta: float = 8.0,
        *,
        logit_standardization: bool = False,
        check_values: bool = True,
    ):
        super().__init__(logit_standardization=logit_standardization, check_values=check_values)
        self.temperature = check_positive("temperature", temperature)
        self.alpha_temperature = check_positive("alpha_temperature", alpha_temperature)
        self.alpha = check_positive("alpha", alpha, allow_zero=True)
        self.beta = check_positive("beta", beta, allow_zero=True)

    def term_weights(self, epoch: float | None) -> dict[str, float]:
        return {"scd": self.alpha, "mcd": self.beta}

    def compute_terms(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: float | None
    ) -> dict[str, Tensor]:
        return rld_terms(
            student_logits,
            teacher_logits,
            labels,
            self.temperature,
            self.alpha_temperature,
            self.active_terms(epoch),
        )
