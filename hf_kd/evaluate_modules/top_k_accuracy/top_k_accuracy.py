"""hf-kd's top-k accuracy as an ``evaluate`` metric module, shipped inside the package.

Load it offline with ``evaluate.load(hf_kd.metrics.TOP_K_ACCURACY_MODULE, k=5)`` (or
:func:`hf_kd.metrics.load_accuracy_metric`); ``k=1`` (the default) reports ``accuracy``,
another ``k`` reports ``top{k}_accuracy``, so that ``evaluate.combine`` of ``k=1`` and
``k=5`` gives the Trainer's ``accuracy`` and ``top5_accuracy``.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np
import torch

from hf_kd.metrics import label_ranks

_DESCRIPTION = """
Top-k accuracy: the fraction of samples whose label is among the k highest-scoring classes,
top-k = (1/N) sum_i [rank_i(y_i) < k], with ties ranked towards the lower class index (as
argmax). Predictions are class scores [N, C] (logits or probabilities) or, for k = 1, the
predicted class ids [N] (what evaluate's image-classification evaluator passes).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: class scores `[N, C]`, or predicted class ids `[N]` when k = 1.
    references: the true class ids `[N]`.
Returns:
    `accuracy` (k = 1) or `top{k}_accuracy`: a float in [0, 1].
Examples:
    >>> metric = evaluate.load(hf_kd.metrics.TOP_K_ACCURACY_MODULE, k=2)
    >>> metric.compute(predictions=[[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]], references=[2, 2])
    {'top2_accuracy': 0.5}
"""

_CITATION = ""


class TopKAccuracy(evaluate.Metric):
    """Top-k accuracy from class scores (any k) or class ids (k = 1)."""

    def __init__(self, k: int = 1, **kwargs):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.k = k
        super().__init__(**kwargs)

    @property
    def result_name(self) -> str:
        return "accuracy" if self.k == 1 else f"top{self.k}_accuracy"

    def _info(self) -> evaluate.MetricInfo:
        scores = datasets.Features(
            {
                "predictions": datasets.Sequence(datasets.Value("float32")),
                "references": datasets.Value("int64"),
            }
        )
        class_ids = datasets.Features(
            {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
        )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[scores, class_ids] if self.k == 1 else [scores],
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        predictions = np.asarray(predictions)
        references = torch.as_tensor(np.asarray(references), dtype=torch.int64)
        if predictions.ndim == 1:  # class ids, k = 1
            hits = torch.as_tensor(predictions, dtype=torch.int64) == references
        else:
            hits = label_ranks(torch.as_tensor(predictions), references) < self.k
        return {self.result_name: float(hits.double().mean())}
