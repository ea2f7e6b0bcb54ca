"""Pieces shared by several losses: dtype handling, checks, z-scores, masks, stable KLs."""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
import torch.nn.functional as F
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


def check_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    """``value`` as a finite float that is > 0 (>= 0 with ``allow_zero``), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def check_flag(name: str, value: object) -> bool:
    """``value`` if it is a bool, else ``ValueError``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return str(value)


def centred_and_std(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise ``z - mean_c z`` and the unbiased std ``[N, 1]`` (two passes).

    Equals ``torch.std(unbiased=True)``, which on CPU is several times slower.
    """
    centred = logits - logits.mean(dim=1, keepdim=True)
    std = torch.linalg.vector_norm(centred, dim=1, keepdim=True) / math.sqrt(logits.shape[1] - 1)
    return centred, std


def standardize_logits(logits: Tensor) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024), row-wise over classes.

    ``z_hat = (z - mean_c z) / (eps + std_c z)`` with the unbiased std and ``eps = 1e-7``
    added to the std (not inside the square root); gradients flow through mean and std.
    """
    centred, std = centred_and_std(logits)
    return centred / (STD_EPS + std)


def target_mask(labels: Tensor, num_classes: int) -> Tensor:
    """Boolean ``[N, C]`` one-hot of the labels."""
    mask = torch.zeros(labels.shape[0], num_classes, dtype=torch.bool, device=labels.device)
    return mask.scatter_(1, labels[:, None], True)


def kl_divergence_rows(teacher_log_probs: Tensor, student_log_probs: Tensor) -> Tensor:
    """Row-wise ``KL(p_t || q_s) = sum_c p_t,c (log p_t,c - log q_s,c)``, shape ``[N]``.

    Both arguments are finite log-probabilities; a teacher entry whose probability
    underflows to zero contributes ``0``.
    """
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(1)


def binary_log_probs(logits: Tensor, index: Tensor) -> Tensor:
    """``[log p_k, log(1 - p_k)]`` of class ``k = index[i]`` against all others, ``[N, 2]``.

    With ``p = softmax(logits)``, both entries are a log-sum-exp over their group of classes
    minus the log-sum-exp of the row. The official DKD/RLD code takes ``log`` of summed
    probabilities instead, which is ``log 0 = -inf`` for a confident float32 row; the two
    agree wherever the official value is finite. Needs ``C >= 2``.
    """
    chosen = target_mask(index, logits.shape[1])
    row_normalizer = logits.logsumexp(dim=1, keepdim=True)
    chosen_logit = logits.gather(1, index[:, None])
    others = logits.masked_fill(chosen, float("-inf")).logsumexp(dim=1, keepdim=True)
    return torch.cat((chosen_logit, others), dim=1) - row_normalizer


def kl_divergence_rows_excluding(
    teacher_logits: Tensor, student_logits: Tensor, excluded: Tensor
) -> Tensor:
    """Row-wise ``KL(softmax(t_i) || softmax(s_i))`` over the classes not ``excluded``, ``[N]``.

    Excluded classes are removed exactly (``-inf`` before the softmax, their terms dropped),
    not pushed down by a finite shift; they receive no gradient. A row whose every class is
    excluded contributes exactly 0 with zero gradient (as both rows are then uniform in the
    official ``-1e9`` fill, whose KL is 0).
    """
    keeps_some = (~excluded).any(dim=1, keepdim=True)
    dropped = excluded & keeps_some
    teacher_log_probs = masked_log_softmax(teacher_logits, dropped, excluded)
    student_log_probs = masked_log_softmax(student_logits, dropped, excluded)
    teacher_probs = teacher_log_probs.exp().masked_fill(excluded, 0.0)
    return (teacher_probs * (teacher_log_probs - student_log_probs)).sum(dim=1)


def masked_log_softmax(logits: Tensor, dropped: Tensor, excluded: Tensor) -> Tensor:
    """``log_softmax`` over the entries not ``dropped``; ``excluded`` entries are set to 0.

    Setting them to a finite 0 keeps ``-inf - (-inf)`` out of every later product, so
    neither the value nor the gradient can become NaN.
    """
    return logits.masked_fill(dropped, float("-inf")).log_softmax(dim=1).masked_fill(excluded, 0.0)
