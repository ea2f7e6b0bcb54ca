"""DeiT's hard distillation against hand-derived float64 values."""

from __future__ import annotations

import math

import pytest
import torch

from hf_kd.losses import build_loss, preset

from .inputs import random_batch


def reference_hard(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """``(1/N) sum_i -log softmax(s_i)[argmax t_i]`` by explicit loops."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        target = max(range(len(t_row)), key=t_row.__getitem__)
        log_normaliser = math.log(sum(math.exp(value) for value in s_row))
        total += log_normaliser - s_row[target]
    return total / len(student)


def test_hard_matches_hand_derived_value() -> None:
    student, teacher, labels = random_batch(4, 6, seed=3)
    output = build_loss("hard")(student, teacher, labels)
    expected = reference_hard(student, teacher)
    assert output.loss.item() == pytest.approx(expected, rel=1e-12)
    assert output.terms["hard"].item() == pytest.approx(expected, rel=1e-12)


def test_hard_ignores_the_labels_and_the_teacher_confidence() -> None:
    student, teacher, labels = random_batch(5, 7, seed=4)
    loss_fn = build_loss("hard")
    reference = loss_fn(student, teacher, labels).loss
    sharper_teacher = 10 * teacher + 3.0  # same argmax
    other_labels = (labels + 1) % 7
    assert loss_fn(student, sharper_teacher, other_labels).loss.item() == pytest.approx(
        reference.item(), rel=1e-12
    )


def test_hard_preset_is_deit_alpha_one_half() -> None:
    chosen = preset("hard", "cifar100")
    assert (chosen.ce_weight, chosen.kd_weight, chosen.warmup_epochs) == (0.5, 0.5, 0)
