"""RLD against hand-derived float64 values, and the all-masked row."""

from __future__ import annotations

import pytest
import torch

from hf_kd.losses import build_loss

from .reference_math import as_rows, kl, mean, scaled, softmax


def reference_rld(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha_temperature: float,
) -> tuple[float, float]:
    """(SCD, MCD) by explicit loops over rows and classes."""
    scd_rows, mcd_rows = [], []
    for s_row, t_row, label in zip(
        as_rows(student), as_rows(teacher), labels.tolist(), strict=True
    ):
        top1 = max(range(len(t_row)), key=lambda c: (t_row[c], -c))  # first index on ties
        p_t = softmax(scaled(t_row, alpha_temperature))
        p_s = softmax(scaled(s_row, alpha_temperature))
        scd_rows.append(kl([p_t[top1], 1 - p_t[top1]], [p_s[label], 1 - p_s[label]]))
        kept = [c for c in range(len(t_row)) if t_row[c] < t_row[label]]
        if kept:
            mcd_rows.append(
                kl(
                    softmax([t_row[c] / temperature for c in kept]),
                    softmax([s_row[c] / temperature for c in kept]),
                )
            )
        else:
            mcd_rows.append(0.0)
    return alpha_temperature**2 * mean(scd_rows), temperature**2 * mean(mcd_rows)


TEACHER = [
    [4.0, 1.0, 2.0, 0.5, -1.0],  # correct and confident: only the target masked
    [1.0, 3.0, 3.0, 0.0, 2.5],  # target 1 ties class 2: both masked; top-1 is class 1
    [2.0, 5.0, -0.5, 1.0, 0.0],  # wrong top-1 (class 1): classes 0 and 1 masked
    [0.5, 1.5, -3.0, 2.0, 0.7],  # target 2 ranked last: every class masked
]
LABELS = [0, 1, 0, 2]


@pytest.mark.parametrize(("temperature", "alpha_temperature"), [(4.0, 4.0), (4.0, 1.0), (1.0, 2.0)])
def test_rld_matches_hand_derived_value(temperature: float, alpha_temperature: float) -> None:
    teacher = torch.tensor(TEACHER, dtype=torch.float64)
    student = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor(LABELS)
    alpha, beta = 1.0, 8.0
    output = build_loss(
        "rld",
        temperature=temperature,
        alpha_temperature=alpha_temperature,
        alpha=alpha,
        beta=beta,
    )(student, teacher, labels)
    scd, mcd = reference_rld(student, teacher, labels, temperature, alpha_temperature)
    assert output.terms["scd"].item() == pytest.approx(scd, rel=1e-12)
    assert output.terms["mcd"].item() == pytest.approx(mcd, rel=1e-12)
    assert output.loss.item() == pytest.approx(alpha * scd + beta * mcd, rel=1e-12)


def test_all_masked_row_gives_exactly_zero_mcd_and_gradient() -> None:
    teacher = torch.tensor(TEACHER, dtype=torch.float64)
    student = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.tensor(LABELS)
    loss_fn = build_loss("rld", alpha=0.0)

    alone = student[3:].clone().requires_grad_(True)
    output = loss_fn(alone, teacher[3:], labels[3:])
    output.terms["mcd"].backward()
    assert output.terms["mcd"].item() == 0.0
    assert torch.equal(alone.grad, torch.zeros_like(alone))

    batch = student.clone().requires_grad_(True)
    loss_fn(batch, teacher, labels).terms["mcd"].backward()
    assert torch.equal(batch.grad[3], torch.zeros(5, dtype=torch.float64))
    assert batch.grad[:3].abs().sum() > 0
