"""Classification metrics in numpy: top-1 and top-5 accuracy.

``evaluate.load("accuracy")`` downloads its script from the Hub, so hf-kd computes its
metrics itself. The Trainer hands ``compute_metrics`` an ``EvalPrediction`` whose
``predictions`` are either class scores ``[N, C]`` (floating) or, after
:func:`top_k_class_indices` as ``preprocess_logits_for_metrics``, the ``k`` best class
indices per sample ``[N, k]`` (integer, best first), which is all that top-k accuracy needs
and keeps the gathered evaluation outputs small for many classes.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import EvalPrediction

TOP_K = 5


def top_k_class_indices(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """The ``min(5, C)`` highest-scoring class indices per sample, best first: ``[N, k]``.

    Signature of ``Trainer(preprocess_logits_for_metrics=...)``; ``labels`` is unused. A
    stable sort breaks ties towards the lower class index, as :func:`ranked_classes` does.
    """
    if isinstance(logits, tuple):
        logits = logits[0]
    ranked = logits.sort(dim=-1, descending=True, stable=True).indices
    return ranked[:, : min(TOP_K, logits.shape[-1])]


def ranked_classes(predictions: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best classes per sample, best first: ``[N, k]``.

    Floating ``predictions`` are scores ``[N, C]`` and are ranked here (ties keep the lower
    class index first, like ``argmax``); integer ones are already ranked indices.
    """
    if np.issubdtype(predictions.dtype, np.floating):
        return np.argsort(-predictions, axis=-1, kind="stable")[:, :k]
    return predictions[:, :k]


def top_k_accuracy(predictions: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the ``k`` best classes.

    ``top-k = (1/N) sum_i [y_i in topk(p_i)]``; with ``k >= C`` it is 1.
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels).reshape(-1)
    if predictions.ndim != 2 or predictions.shape[0] != labels.shape[0]:
        raise ValueError(
            f"predictions must be [N, C] scores or [N, k] class indices for N={labels.shape[0]} "
            f"labels, got shape {predictions.shape}"
        )
    if labels.shape[0] == 0:
        raise ValueError("cannot compute accuracy over zero samples")
    best = ranked_classes(predictions, k)
    return float((best == labels[:, None]).any(axis=1).mean())


def compute_accuracy_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """``{"accuracy": top-1, "top5_accuracy": top-5}`` for ``Trainer(compute_metrics=...)``."""
    predictions = eval_prediction.predictions
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    labels = eval_prediction.label_ids
    return {
        "accuracy": top_k_accuracy(predictions, labels, 1),
        "top5_accuracy": top_k_accuracy(predictions, labels, TOP_K),
    }
