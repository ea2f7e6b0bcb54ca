"""Properties every registered loss must have (spec section A)."""

from __future__ import annotations

import pytest
import torch

from hf_kd.losses import build_loss

from .inputs import LOSS_NAMES, random_batch

THREE_CLASS_LOSSES = ("dkd", "normkd_dkd", "rld")


@pytest.mark.parametrize("logit_standardization", [False, True])
def test_gradcheck(loss_name: str, logit_standardization: bool) -> None:
    student, teacher, labels = random_batch(5, 6, seed=20)
    loss_fn = build_loss(loss_name, logit_standardization=logit_standardization)
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda logits: loss_fn(logits, teacher, labels, epoch=3).loss, (student,), eps=1e-6
    )


def test_no_gradient_reaches_the_teacher(loss_name: str) -> None:
    student, teacher, labels = random_batch(5, 6, seed=21)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    build_loss(loss_name)(student, teacher, labels).loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_loss_is_the_weighted_sum_of_its_terms(loss_name: str) -> None:
    student, teacher, labels = random_batch(6, 7, seed=22)
    loss_fn = build_loss(loss_name)
    output = loss_fn(student, teacher, labels, epoch=4)
    assert set(output.terms) == set(loss_fn.term_names)
    weights = loss_fn.term_weights(4)
    expected = sum(weights[name] * value for name, value in output.terms.items())
    assert output.loss.ndim == 0
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_logit_standardization_ignores_per_row_shift_and_positive_scale(loss_name: str) -> None:
    student, teacher, labels = random_batch(6, 7, seed=23)
    generator = torch.Generator().manual_seed(1)

    def shift_and_scale(logits: torch.Tensor) -> torch.Tensor:
        scale = 0.2 + 5 * torch.rand(logits.shape[0], 1, generator=generator, dtype=logits.dtype)
        shift = 10 * torch.randn(logits.shape[0], 1, generator=generator, dtype=logits.dtype)
        return scale * logits + shift

    loss_fn = build_loss(loss_name, logit_standardization=True)
    original = loss_fn(student, teacher, labels).loss
    transformed = loss_fn(shift_and_scale(student), shift_and_scale(teacher), labels).loss
    assert transformed.item() == pytest.approx(original.item(), rel=1e-6)
    assert build_loss(loss_name)(shift_and_scale(student), teacher, labels).loss.item() != (
        pytest.approx(original.item(), rel=1e-3)
    )


def test_student_equal_to_teacher_beats_a_random_student(loss_name: str) -> None:
    random_student, teacher, labels = random_batch(8, 10, seed=24)
    loss_fn = build_loss(loss_name)
    matched = loss_fn(teacher.clone(), teacher, labels).loss
    mismatched = loss_fn(random_student, teacher, labels).loss
    assert matched < mismatched


@pytest.mark.parametrize("low_precision", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(
    loss_name: str, low_precision: torch.dtype
) -> None:
    """Logits up to magnitude 50 in float16/bfloat16: a finite float32 result within 1e-3
    (relative) of the float64 result on the same rounded values."""
    generator = torch.Generator().manual_seed(25)
    student = (100 * torch.rand(16, 10, generator=generator) - 50).to(low_precision)
    teacher = (100 * torch.rand(16, 10, generator=generator) - 50).to(low_precision)
    labels = torch.randint(0, 10, (16,), generator=generator)
    loss_fn = build_loss(loss_name)
    low = loss_fn(student, teacher, labels)
    exact = loss_fn(student.double(), teacher.double(), labels)
    assert low.loss.dtype == torch.float32
    assert torch.isfinite(low.loss)
    assert low.loss.item() == pytest.approx(exact.loss.item(), rel=1e-3)
    for name, value in low.terms.items():
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(exact.terms[name].item(), rel=1e-3, abs=1e-6)


def test_float32_inputs_stay_float32(loss_name: str) -> None:
    student, teacher, labels = random_batch(4, 5, dtype=torch.float32)
    assert build_loss(loss_name)(student, teacher, labels).loss.dtype == torch.float32


def test_shape_mismatch_is_rejected(loss_name: str) -> None:
    student, teacher, labels = random_batch(4, 5)
    with pytest.raises(ValueError, match="differ in shape"):
        build_loss(loss_name)(student, teacher[:, :4], labels)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        build_loss(loss_name)(student[0], teacher[0], labels)
    with pytest.raises(ValueError, match="labels must be"):
        build_loss(loss_name)(student, teacher, labels[:3])


@pytest.mark.parametrize("bad_label", [-1, 5])
def test_out_of_range_labels_are_rejected(loss_name: str, bad_label: int) -> None:
    student, teacher, labels = random_batch(4, 5)
    labels[2] = bad_label
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\]"):
        build_loss(loss_name)(student, teacher, labels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_non_integer_labels_are_rejected(loss_name: str, dtype: torch.dtype) -> None:
    student, teacher, labels = random_batch(4, 5)
    with pytest.raises(ValueError, match="integer"):
        build_loss(loss_name)(student, teacher, labels.to(dtype))


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_non_finite_logits_are_rejected(loss_name: str, bad_value: float, side: str) -> None:
    student, teacher, labels = random_batch(4, 5)
    (student if side == "student" else teacher)[1, 3] = bad_value
    with pytest.raises(ValueError, match=f"{side}_logits contain NaN or inf"):
        build_loss(loss_name)(student, teacher, labels)


def test_fewer_than_three_classes(loss_name: str) -> None:
    student, teacher, labels = random_batch(4, 2)
    loss_fn = build_loss(loss_name)
    if loss_name in THREE_CLASS_LOSSES:
        with pytest.raises(ValueError, match="at least 3 classes, got C=2"):
            loss_fn(student, teacher, labels)
    else:
        assert torch.isfinite(loss_fn(student, teacher, labels).loss)


def test_every_registered_loss_is_covered() -> None:
    from hf_kd.losses import available_losses

    assert sorted(LOSS_NAMES) == available_losses()
