"""DKD against hand-derived float64 values, and its deliberate numerical fixes."""

from __future__ import annotations

import math

import pytest
import torch

from hf_kd.losses import build_loss

from .inputs import random_batch
from .reference_math import as_rows, kl, mean, scaled, softmax, standardize


def reference_dkd_row(
    student_row: list[float], teacher_row: list[float], label: int
) -> tuple[float, float]:
    """(TCKD, NCKD) KLs of one row of already temperature-scaled logits, by explicit sums."""
    p_s, p_t = softmax(student_row), softmax(teacher_row)
    binary_s = [p_s[label], sum(p for c, p in enumerate(p_s) if c != label)]
    binary_t = [p_t[label], sum(p for c, p in enumerate(p_t) if c != label)]
    non_target_s = softmax([z for c, z in enumerate(student_row) if c != label])
    non_target_t = softmax([z for c, z in enumerate(teacher_row) if c != label])
    return kl(binary_t, binary_s), kl(non_target_t, non_target_s)


def reference_dkd(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[float, float]:
    rows = [
        reference_dkd_row(scaled(s_row, temperature), scaled(t_row, temperature), label)
        for s_row, t_row, label in zip(
            as_rows(student), as_rows(teacher), labels.tolist(), strict=True
        )
    ]
    return (
        temperature**2 * mean([tckd for tckd, _ in rows]),
        temperature**2 * mean([nckd for _, nckd in rows]),
    )


@pytest.mark.parametrize(("temperature", "alpha", "beta"), [(4.0, 1.0, 8.0), (1.0, 0.5, 2.0)])
def test_dkd_matches_hand_derived_value(temperature: float, alpha: float, beta: float) -> None:
    student, teacher, labels = random_batch(4, 5)
    output = build_loss("dkd", temperature=temperature, alpha=alpha, beta=beta)(
        student, teacher, labels
    )
    tckd, nckd = reference_dkd(student, teacher, labels, temperature)
    assert output.terms["tckd"].item() == pytest.approx(tckd, rel=1e-12)
    assert output.terms["nckd"].item() == pytest.approx(nckd, rel=1e-12)
    assert output.loss.item() == pytest.approx(alpha * tckd + beta * nckd, rel=1e-12)


def test_dkd_with_logit_standardization_matches_hand_derived_value() -> None:
    student, teacher, labels = random_batch(3, 6, seed=3)
    output = build_loss("dkd", temperature=2.0, logit_standardization=True)(
        student, teacher, labels
    )
    standardized_student = torch.tensor(
        [standardize(row) for row in as_rows(student)], dtype=torch.float64
    )
    standardized_teacher = torch.tensor(
        [standardize(row) for row in as_rows(teacher)], dtype=torch.float64
    )
    tckd, nckd = reference_dkd(standardized_student, standardized_teacher, labels, 2.0)
    assert output.terms["tckd"].item() == pytest.approx(tckd, rel=1e-9)
    assert output.terms["nckd"].item() == pytest.approx(nckd, rel=1e-9)


def test_dkd_excludes_the_target_exactly_even_for_a_huge_teacher_margin() -> None:
    """The official -1000 shift leaks the target into NCKD when the scaled margin nears 1000;
    hf-kd's NCKD is the softmax over the non-target classes only."""
    teacher = torch.tensor([[5000.0, 1.0, 2.0, 0.5]], dtype=torch.float64)
    student = torch.tensor([[3.0, 0.2, -1.0, 2.0]], dtype=torch.float64)
    labels = torch.tensor([0])
    output = build_loss("dkd", temperature=1.0)(student, teacher, labels)
    expected = kl(softmax([1.0, 2.0, 0.5]), softmax([0.2, -1.0, 2.0]))
    assert output.terms["nckd"].item() == pytest.approx(expected, rel=1e-12)


def test_tckd_is_finite_for_a_confident_float32_student() -> None:
    """sum_{c != y} p_s underflows to 0 in float32 here: log of summed probabilities is -inf."""
    student = torch.tensor([[120.0, 0.0, 0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    labels = torch.tensor([0])
    probabilities = torch.softmax(student.detach(), dim=1)
    assert probabilities[0, 1:].sum() == 0  # the official formula would take log(0)
    output = build_loss("dkd", temperature=1.0)(student, teacher, labels)
    output.loss.backward()
    log_rest = math.log(3) - 120.0  # log(1 - p_y) = log(3 e^0) - log(e^120 + 3)
    p_t = softmax([2.0, 1.0, 0.0, -1.0])
    expected_tckd = p_t[0] * math.log(p_t[0]) + (1 - p_t[0]) * (math.log(1 - p_t[0]) - log_rest)
    assert output.terms["tckd"].item() == pytest.approx(expected_tckd, rel=1e-6)
    assert torch.isfinite(student.grad).all()


def test_zero_alpha_skips_tckd() -> None:
    student, teacher, labels = random_batch(4, 5)
    output = build_loss("dkd", alpha=0.0, beta=8.0)(student, teacher, labels)
    assert set(output.terms) == {"nckd"}
    assert output.loss.item() == pytest.approx(8.0 * output.terms["nckd"].item(), rel=1e-12)
