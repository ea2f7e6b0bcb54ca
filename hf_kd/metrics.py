"""Classification metrics: top-1 and top-5 accuracy, one ranking rule everywhere.

:func:`label_ranks` ranks each sample's label among its class scores, ties towards the lower
class index (as ``argmax``). Two ways use it:

* :func:`accuracy_means` counts hits on the device, batch by batch, for the trainer's
  evaluation (no ``[N, C]`` logits kept);
* the ``evaluate`` metric module ``top_k_accuracy`` that ships inside hf-kd
  (``hf_kd/evaluate_modules/``, :data:`TOP_K_ACCURACY_MODULE`) and loads offline with
  :func:`load_accuracy_metric`: what :func:`compute_accuracy_metrics` (a
  ``Trainer(compute_metrics=...)``), the transfer evaluation and evaluate's
  ``image-classification`` evaluator compute. ``evaluate.load("accuracy")`` would fetch its
  script from the Hub; a local module path never does.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import EvalPrediction

if TYPE_CHECKING:
    from evaluate import CombinedEvaluations, EvaluationModule

TOP_K = 5
TOP_K_ACCURACY_MODULE = str(Path(__file__).parent / "evaluate_modules" / "top_k_accuracy")


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


@cache
def load_accuracy_metric(k: int = 1) -> EvaluationModule:
    """hf-kd's ``top_k_accuracy`` ``evaluate`` module, from the package, offline.

    ``k=1`` reports ``accuracy`` from class scores ``[N, C]`` or class ids ``[N]``; another
    ``k`` reports ``top{k}_accuracy`` from scores. Kept in memory (no cache files); one
    instance per ``k``, reused.
    """
    import evaluate  # imported here: it is slow to import and only metrics need it

    return evaluate.load(TOP_K_ACCURACY_MODULE, k=k, keep_in_memory=True)


def load_accuracy_metrics() -> CombinedEvaluations:
    """``accuracy`` and ``top5_accuracy`` as one ``evaluate.combine`` of the two modules."""
    import evaluate

    return evaluate.combine([load_accuracy_metric(1), load_accuracy_metric(TOP_K)])


def compute_accuracy_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """``{"accuracy": top-1, "top5_accuracy": top-5}`` for ``Trainer(compute_metrics=...)``.

    ``predictions`` are the gathered class scores ``[N, C]`` (the first element of a tuple);
    computed by :func:`load_accuracy_metrics`.
    """
    predictions = eval_prediction.predictions
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    return load_accuracy_metrics().compute(
        predictions=predictions, references=eval_prediction.label_ids
    )
