"""MCLD by explicit loops in plain Python (float64), independent of hf_kd."""

from __future__ import annotations

import math

import torch

from .reference_math import as_rows, log_sum_exp, mean


def embed(values: list[float], similarity: str, dropped: int | None = None) -> list[float] | None:
    """The vector whose dot products give the similarity; ``None`` if it has no direction."""
    kept = [k for k in range(len(values)) if k != dropped]
    if similarity == "dot":
        return [0.0 if k == dropped else value for k, value in enumerate(values)]
    centre = mean([values[k] for k in kept]) if similarity == "pearson" else 0.0
    vector = [0.0 if k == dropped else value - centre for k, value in enumerate(values)]
    norm = math.sqrt(sum(x * x for x in vector))
    if norm <= 1e-12 * max(abs(value) for value in values) or norm == 0:
        return None
    return [x / norm for x in vector]


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def reference_mcld(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    *,
    tau: float = 0.1,
    similarity: str = "pearson",
    target_mask: bool = True,
    target_mask_variant: str = "negatives",
    sample_positives: str = "label",
    symmetric_instance: bool = False,
    category_classes: str = "all",
) -> dict[str, float]:
    """The unweighted ``instance``, ``sample`` and ``category`` terms of spec 6.2 / 6.3."""
    s_rows, t_rows, y = as_rows(student), as_rows(teacher), labels.tolist()
    n, num_classes = len(s_rows), len(s_rows[0])
    drop_entry = target_mask and target_mask_variant == "target_entry"
    zero = [0.0] * num_classes
    s_embedded = [
        embed(s_rows[i], similarity, y[i] if drop_entry else None) or zero for i in range(n)
    ]
    t_embedded = [
        embed(t_rows[i], similarity, y[i] if drop_entry else None) or zero for i in range(n)
    ]
    a = [[dot(s_embedded[i], t_embedded[j]) / tau for j in range(n)] for i in range(n)]

    mask_negatives = target_mask and target_mask_variant == "negatives"
    student_to_teacher, teacher_to_student = [], []
    for i in range(n):
        candidates = [j for j in range(n) if j == i or not (mask_negatives and y[j] == y[i])]
        student_to_teacher.append(log_sum_exp([a[i][j] for j in candidates]) - a[i][i])
        teacher_to_student.append(log_sum_exp([a[j][i] for j in candidates]) - a[i][i])
    instance = mean(student_to_teacher)
    if symmetric_instance:
        instance = (instance + mean(teacher_to_student)) / 2

    top1 = [max(range(num_classes), key=lambda c, row=row: (row[c], -c)) for row in t_rows]
    groups = y if sample_positives == "label" else top1
    sample_rows = []
    for i in range(n):
        normalizer = log_sum_exp(a[i])
        positives = [j for j in range(n) if groups[j] == groups[i]]
        sample_rows.append(-mean([a[i][p] - normalizer for p in positives]))
    sample = mean(sample_rows)

    columns = range(num_classes)
    s_columns = [embed([s_rows[i][c] for i in range(n)], similarity) for c in columns]
    t_columns = [embed([t_rows[i][c] for i in range(n)], similarity) for c in columns]
    allowed = [c for c in columns if category_classes == "all" or c in set(y)]
    anchors = [c for c in allowed if s_columns[c] is not None and t_columns[c] is not None]
    category_rows = []
    for c in anchors:
        logits = [dot(s_columns[c], t_columns[d] or [0.0] * n) / tau for d in allowed]
        category_rows.append(log_sum_exp(logits) - dot(s_columns[c], t_columns[c]) / tau)
    category = mean(category_rows) if category_rows else 0.0
    return {"instance": instance, "sample": sample, "category": category}
