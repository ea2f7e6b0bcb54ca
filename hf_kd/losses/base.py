"""The contract every distillation loss keeps (spec section A)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from hf_kd.losses._common import (
    check_flag,
    check_logits_and_labels,
    standardize_logits,
    to_compute_dtype,
)


@dataclass
class LossOutput:
    """The distillation loss and its named terms.

    ``loss`` is the distillation loss alone (no cross-entropy, no outer ``kd_weight``, no
    outer warm-up) and equals ``sum(weights[k] * terms[k])``; each term is a
    differentiable 0-dim tensor. A term whose weight is 0 is not computed and is absent
    from ``terms``.
    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


class DistillationLoss(nn.Module):
    """Base class: input checks, float32 compute, optional logit standardisation.

    Subclasses set ``term_names`` and implement :meth:`compute_terms` and
    :meth:`term_weights`. The teacher is treated as a constant.
    """

    term_names: ClassVar[tuple[str, ...]] = ()
    min_classes: ClassVar[int] = 2

    def __init__(self, *, logit_standardization: bool = False, check_values: bool = True):
        super().__init__()
        self.logit_standardization = check_flag("logit_standardization", logit_standardization)
        self.check_values = check_flag("check_values", check_values)

    def compute_terms(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, epoch: float | None
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def term_weights(self, epoch: float | None) -> dict[str, float]:
        """The weight of each term in ``loss``; a term with weight 0 is skipped."""
        return dict.fromkeys(self.term_names, 1.0)

    def active_terms(self, epoch: float | None) -> tuple[str, ...]:
        """The terms with a non-zero weight at ``epoch``: the ones worth computing."""
        weights = self.term_weights(epoch)
        return tuple(name for name in self.term_names if weights[name] != 0)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor,
        *,
        epoch: float | None = None,
    ) -> LossOutput:
        check_logits_and_labels(
            student_logits,
            teacher_logits,
            labels,
            min_classes=self.min_classes,
            check_values=self.check_values,
        )
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            student = to_compute_dtype(student_logits)
            teacher = to_compute_dtype(teacher_logits.detach()).to(student.dtype)
            if self.logit_standardization:
                student = standardize_logits(student)
                teacher = standardize_logits(teacher)
            terms = self.compute_terms(student, teacher, labels.long(), epoch)
            weights = self.term_weights(epoch)
            loss = sum(weights[name] * value for name, value in terms.items())
            if not isinstance(loss, Tensor):
                loss = student.new_zeros(())
        return LossOutput(loss=loss, terms=terms)

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.hyperparameters().items())

    def hyperparameters(self) -> dict[str, object]:
        """The constructor arguments, for logs and model cards."""
        from hf_kd.losses.registry import constructor_parameters

        return {name: getattr(self, name) for name in constructor_parameters(type(self))}
