"""Top-1 / top-k accuracy on the device and as hf-kd's offline ``evaluate`` module, against
hand-counted values."""

from __future__ import annotations

import evaluate
import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from hf_kd.metrics import (
    TOP_K_ACCURACY_MODULE,
    accuracy_means,
    compute_accuracy_metrics,
    label_ranks,
    load_accuracy_metric,
    load_accuracy_metrics,
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


def test_label_ranks_and_device_means():
    ranks = label_ranks(torch.from_numpy(SCORES), torch.from_numpy(LABELS))
    assert ranks.tolist() == [0, 5, 1, 1]
    means = accuracy_means(torch.from_numpy(SCORES), torch.from_numpy(LABELS))
    assert {name: float(value) for name, value in means.items()} == {
        "accuracy": 0.25,
        "top5_accuracy": 0.75,
    }


def test_the_evaluate_module_loads_offline_from_the_package(no_network):
    assert TOP_K_ACCURACY_MODULE.endswith("hf_kd/evaluate_modules/top_k_accuracy")
    expected = {1: 0.25, 2: 0.75, 5: 0.75, 6: 1.0}
    for k, accuracy in expected.items():
        name = "accuracy" if k == 1 else f"top{k}_accuracy"
        metric = evaluate.load(TOP_K_ACCURACY_MODULE, k=k, keep_in_memory=True)
        assert metric.compute(predictions=SCORES, references=LABELS) == {name: accuracy}
    # class ids, as evaluate's image-classification evaluator passes them
    class_ids = SCORES.argmax(axis=1)
    assert load_accuracy_metric().compute(predictions=class_ids, references=LABELS) == {
        "accuracy": 0.25
    }


def test_combined_modules_are_the_trainers_metrics(no_network):
    expected = {"accuracy": 0.25, "top5_accuracy": 0.75}
    combined = evaluate.combine([load_accuracy_metric(1), load_accuracy_metric(5)])
    assert combined.compute(predictions=SCORES, references=LABELS) == expected
    assert load_accuracy_metrics().compute(predictions=SCORES, references=LABELS) == expected
    assert compute_accuracy_metrics(EvalPrediction(SCORES, LABELS)) == expected
    assert compute_accuracy_metrics(EvalPrediction((SCORES, SCORES), LABELS)) == expected


def test_fewer_classes_than_k():
    scores = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    expected = {"accuracy": 0.5, "top5_accuracy": 1.0}
    means = accuracy_means(torch.from_numpy(scores), torch.tensor([0, 0]))
    assert {name: float(value) for name, value in means.items()} == expected
    assert compute_accuracy_metrics(EvalPrediction(scores, np.array([0, 0]))) == expected


def test_bad_inputs():
    with pytest.raises(ValueError, match="k must be a positive integer"):
        evaluate.load(TOP_K_ACCURACY_MODULE, k=0)
    with pytest.raises(ValueError, match="Predictions and/or references don't match"):
        load_accuracy_metric(5).compute(predictions=[1, 0], references=[1, 1])  # ids, k > 1
