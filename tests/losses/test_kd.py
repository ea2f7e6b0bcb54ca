"""KD against hand-derived float64 values."""

from __future__ import annotations

import pytest
import torch

from hf_kd.losses import build_loss

from .inputs import random_batch
from .reference_math import as_rows, kl, mean, scaled, softmax, standardize


def reference_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    """``T^2 (1/N) sum_i KL(softmax(t_i/T) || softmax(s_i/T))`` by explicit loops."""
    return temperature**2 * mean(
        [
            kl(softmax(scaled(t_row, temperature)), softmax(scaled(s_row, temperature)))
            for s_row, t_row in zip(as_rows(student), as_rows(teacher), strict=True)
        ]
    )


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_hand_derived_value(temperature: float) -> None:
    student, teacher, labels = random_batch(3, 5)
    output = build_loss("kd", temperature=temperature)(student, teacher, labels)
    expected = reference_kd(student, teacher, temperature)
    assert output.loss.dtype == torch.float64
    assert output.loss.item() == pytest.approx(expected, rel=1e-12)
    assert output.terms["kd"].item() == pytest.approx(expected, rel=1e-12)


def test_kd_gradient_is_temperature_over_n_times_probability_gap() -> None:
    student, teacher, labels = random_batch(4, 6, seed=1)
    student.requires_grad_(True)
    temperature = 4.0
    build_loss("kd", temperature=temperature)(student, teacher, labels).loss.backward()
    expected = [
        [
            temperature / 4 * (q - p)
            for q, p in zip(
                softmax(scaled(s_row, temperature)),
                softmax(scaled(t_row, temperature)),
                strict=True,
            )
        ]
        for s_row, t_row in zip(as_rows(student), as_rows(teacher), strict=True)
    ]
    torch.testing.assert_close(student.grad, torch.tensor(expected, dtype=torch.float64))


def test_kd_with_logit_standardization_matches_hand_derived_value() -> None:
    student, teacher, labels = random_batch(3, 5, seed=2)
    temperature = 2.0
    output = build_loss("kd", temperature=temperature, logit_standardization=True)(
        student, teacher, labels
    )
    expected = temperature**2 * mean(
        [
            kl(
                softmax(scaled(standardize(t_row), temperature)),
                softmax(scaled(standardize(s_row), temperature)),
            )
            for s_row, t_row in zip(as_rows(student), as_rows(teacher), strict=True)
        ]
    )
    assert output.loss.item() == pytest.approx(expected, rel=1e-10)
