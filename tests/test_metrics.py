"""Top-1 / top-5 accuracy, on the device and in numpy, against hand-counted values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from hf_kd.metrics import (
    accuracy_means,
    compute_accuracy_metrics,
    label_ranks,
    top_k_accuracy,
)

# 4 samples, 6 classes. Ranked classes per row (best first):
#   row 0: 2 > 0 > 1 > 3 > 4 > 5      label 2 -> top-1 hit
#   row 1: 5 > 4 > 3 > 2 > 1 > 0      label 0 -> miss even in top-5 (rank 6)
#   row 2: 1 > 3 > 0 > 2 > 5 > 4      label 3 -> top-5 hit (rank 2)
#   row 3: 0 = 4 > 1 > 2 > 3 > 5      label 4 -> tie with 0 broken to the lower index: rank 2
SCORES = np.array(
    [
        [0.5, 0.1, 0.9, 0.0, -1.0, -2.0],
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        [0.3, 0.9, 0.2, 0.5, -0.1, 0.1],
        [1.0, 0.5, 0.2, 0.1, 1.0, -3.0],
    ],
    dtype=np.float32,
)
LABELS = np.array([2, 0, 3, 4])


def test_top_k_accuracy_from_scores():
    assert top_k_accuracy(SCORES, LABELS, 1) == 0.25
    assert top_k_accuracy(SCORES, LABELS, 2) == 0.75
    assert top_k_accuracy(SCORES, LABELS, 5) == 0.75
    assert top_k_accuracy(SCORES, LABELS, 6) == 1.0


def test_label_ranks_and_device_means():
    ranks = label_ranks(torch.from_numpy(SCORES), torch.from_numpy(LABELS))
    assert ranks.tolist() == [0, 5, 1, 1]
    means = accuracy_means(torch.from_numpy(SCORES), torch.from_numpy(LABELS))
    assert {name: float(value) for name, value in means.items()} == {
        "accuracy": 0.25,
        "top5_accuracy": 0.75,
    }


def test_top_k_indices_give_the_same_metrics_as_scores():
    indices = np.argsort(-SCORES, axis=-1, kind="stable")[:, :5]
    from_scores = compute_accuracy_metrics(EvalPrediction(SCORES, LABELS))
    from_indices = compute_accuracy_metrics(EvalPrediction(indices, LABELS))
    assert from_scores == from_indices == {"accuracy": 0.25, "top5_accuracy": 0.75}


def test_fewer_classes_than_k():
    scores = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    means = accuracy_means(torch.from_numpy(scores), torch.tensor([0, 0]))
    assert {name: float(value) for name, value in means.items()} == {
        "accuracy": 0.5,
        "top5_accuracy": 1.0,
    }
    metrics = compute_accuracy_metrics(EvalPrediction(scores, np.array([0, 0])))
    assert metrics == {"accuracy": 0.5, "top5_accuracy": 1.0}


def test_bad_shapes():
    with pytest.raises(ValueError, match="predictions must be"):
        top_k_accuracy(SCORES[:3], LABELS, 1)
    with pytest.raises(ValueError, match="zero samples"):
        top_k_accuracy(np.zeros((0, 3), dtype=np.float32), np.zeros(0, dtype=np.int64), 1)
