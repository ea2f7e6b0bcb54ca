"""Pieces shared by several losses: dtype handling, input checks, z-scores, masks."""

from __future__ import annotations

import torch
from torch import Tensor

LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)
STD_EPS = 1e-7


def to_compute_dtype(logits: Tensor) -> Tensor:
    """float16/bfloat16 -> float32; float32 and float64 are kept as they are."""
    return logits.float() if logits.dtype in LOW_PRECISION_DTYPES else logits


def check_logits_and_labels(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    min_classes: int = 2,
    check_values: bool = True,
) -> None:
    """Raise ``ValueError`` naming the problem with a loss's inputs.

    Shape and dtype checks never touch the data. ``check_values`` adds the checks that read
    the values (label range, NaN/inf), which synchronise with the device.
    """
    if student_logits.ndim != 2:
        raise ValueError(f"student_logits must be [N, C], got shape {tuple(student_logits.shape)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student and teacher logits differ in shape: "
            f"student {tuple(student_logits.shape)} vs teacher {tuple(teacher_logits.shape)}; "
            "the teacher and the student must predict the same classes in the same order"
        )
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not logits.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got {logits.dtype}")
    num_samples, num_classes = student_logits.shape
    if num_classes < min_classes:
        raise ValueError(f"this loss needs at least {min_classes} classes, got C={num_classes}")
    if labels.ndim != 1 or labels.shape[0] != num_samples:
        raise ValueError(
            f"labels must be [N]=[{num_samples}] to match the logits, got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor (int64), got {labels.dtype}")
    if not check_values or num_samples == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}] for C={num_classes} classes, "
            f"got values in [{low}, {high}]"
        )
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not bool(torch.isfinite(logits).all()):
            raise ValueError(
                f"{name} contain NaN or inf; check the model's output and the learning rate "
                "(mixed precision overflow is a common cause)"
            )


def standardize_logits(logits: Tensor) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024), row-wise over classes.

    ``z_hat = (z - mean_c z) / (eps + std_c z)`` with the unbiased std and ``eps = 1e-7``
    added to the std (not inside the square root); gradients flow through mean and std.
    """
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True, unbiased=True)
    return (logits - mean) / (STD_EPS + std)


def target_mask(labels: Tensor, num_classes: int) -> Tensor:
    """Boolean ``[N, C]`` one-hot of the labels."""
    return torch.nn.functional.one_hot(labels, num_classes).bool()
