"""Classification metrics: top-1 and top-5 accuracy.

:func:`accuracy_means` counts them on the device, batch by batch, for the trainer's
evaluation (no ``[N, C]`` logits kept). :func:`compute_accuracy_metrics` computes them in
numpy for ``Trainer(compute_metrics=...)``, from class scores ``[N, C]`` (floating) or the
``k`` best class indices per sample ``[N, k]`` (integer, best first). Both rank ties
towards the lower class index, as ``argmax`` does.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import EvalPrediction

TOP_K = 5


def label_ranks(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The 0-based rank of each sample's label among its class scores: ``[N]`` int64.

    ``rank_i = #{c : s_ic > s_iy} + #{c < y : s_ic = s_iy}`` (ties ranked towards the lower
    class index): the label is among the ``k`` best classes iff ``rank_i < k``.
    """
    label_scores = scores.gather(1, labels[:, None])
    classes = torch.arange(scores.shape[1], device=scores.device)
    tied_ahead = (scores == label_scores) & (classes < labels[:, None])
    return ((scores > label_scores) | tied_ahead).sum(dim=1)


def accuracy_means(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"accuracy": top-1, "top5_accuracy": top-5}`` of one batch, on its device.

    Means over the batch's samples of ``[rank_i < k]`` (:func:`label_ranks`); no host sync.
    """
    ranks = label_ranks(scores, labels)
    return {
        "accuracy": (ranks < 1).float().mean(),
        f"top{TOP_K}_accuracy": (ranks < TOP_K).float().mean(),
    }


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
