"""NormKD and NormKD+DKD against hand-derived float64 values, and the per-sample weighting."""

from __future__ import annotations

import pytest
import torch

from hf_kd.losses import build_loss

from .inputs import random_batch
from .reference_math import as_rows, kl, mean, scaled, softmax, std_unbiased
from .test_dkd import reference_dkd_row


def reference_normkd(student: torch.Tensor, teacher: torch.Tensor, t_norm: float) -> float:
    contributions = []
    for s_row, t_row in zip(as_rows(student), as_rows(teacher), strict=True):
        teacher_temperature = t_norm * std_unbiased(t_row)
        student_temperature = t_norm * std_unbiased(s_row)
        divergence = kl(
            softmax(scaled(t_row, teacher_temperature)), softmax(scaled(s_row, student_temperature))
        )
        contributions.append(teacher_temperature**2 * divergence)
    return mean(contributions)


@pytest.mark.parametrize("t_norm", [2.0, 0.5])
def test_normkd_matches_hand_derived_value(t_norm: float) -> None:
    student, teacher, labels = random_batch(4, 6)
    output = build_loss("normkd", t_norm=t_norm)(student, teacher, labels)
    expected = reference_normkd(student, teacher, t_norm)
    assert output.loss.item() == pytest.approx(expected, rel=1e-12)
    assert output.terms["normkd"].item() == pytest.approx(expected, rel=1e-12)


def test_normkd_dkd_matches_hand_derived_value() -> None:
    student, teacher, labels = random_batch(4, 5, seed=4)
    t_norm, alpha, beta = 2.0, 4.0, 5.0
    output = build_loss("normkd_dkd", t_norm=t_norm, alpha=alpha, beta=beta)(
        student, teacher, labels
    )
    tckd_rows, nckd_rows = [], []
    for s_row, t_row, label in zip(
        as_rows(student), as_rows(teacher), labels.tolist(), strict=True
    ):
        teacher_temperature = t_norm * std_unbiased(t_row)
        student_temperature = t_norm * std_unbiased(s_row)
        tckd, nckd = reference_dkd_row(
            scaled(s_row, student_temperature), scaled(t_row, teacher_temperature), label
        )
        tckd_rows.append(teacher_temperature**2 * tckd)
        nckd_rows.append(teacher_temperature**2 * nckd)
    assert output.terms["tckd"].item() == pytest.approx(mean(tckd_rows), rel=1e-12)
    assert output.terms["nckd"].item() == pytest.approx(mean(nckd_rows), rel=1e-12)
    expected = alpha * mean(tckd_rows) + beta * mean(nckd_rows)
    assert output.loss.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["normkd", "normkd_dkd"])
def test_each_sample_is_weighted_by_its_teacher_temperature_squared(name: str) -> None:
    """Scaling teacher row 0 by k leaves its softmax unchanged (its temperature scales too)
    but multiplies its weight T_t,0^2, hence its contribution, by k^2."""
    student, teacher, labels = random_batch(4, 5, seed=5)
    loss_fn = build_loss(name)
    batch_loss = loss_fn(student, teacher, labels).loss.item()
    row0_loss = loss_fn(student[:1], teacher[:1], labels[:1]).loss.item()
    factor = 3.0
    sharper_teacher = teacher.clone()
    sharper_teacher[0] *= factor
    sharper_loss = loss_fn(student, sharper_teacher, labels).loss.item()
    expected = batch_loss + (factor**2 - 1) * row0_loss / 4
    assert sharper_loss == pytest.approx(expected, rel=1e-10)


def test_constant_student_row_gives_a_finite_loss() -> None:
    """The official code divides by a zero std (NaN); hf-kd floors the std at 1e-7."""
    student = torch.full((1, 4), 0.5, dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64)
    output = build_loss("normkd", t_norm=2.0)(student, teacher, torch.tensor([0]))
    output.loss.backward()
    teacher_row = teacher[0].tolist()
    teacher_temperature = 2.0 * std_unbiased(teacher_row)
    expected = teacher_temperature**2 * kl(
        softmax(scaled(teacher_row, teacher_temperature)), [0.25] * 4
    )
    assert output.loss.item() == pytest.approx(expected, rel=1e-12)
    assert torch.isfinite(student.grad).all()
