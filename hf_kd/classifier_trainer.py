"""``ClassifierTrainer``: transformers' ``Trainer`` for a plain classifier (a teacher trained
with cross-entropy) fed by either data path of :mod:`hf_kd.data.pipeline`.

On the decode-once path a batch holds uint8 ``images`` and their ``view_params``;
``_prepare_inputs`` turns them into ``pixel_values`` on the device
(:class:`hf_kd.data.DeviceViews`), as :class:`hf_kd.trainer.DistillationTrainer` does.
PIL-path batches pass through unchanged.

Saving follows :class:`hf_kd.model_folder.ModelFolderMixin`, as ``DistillationTrainer``'s:
weights by :func:`hf_kd.hub.save_student` with the model's ``preprocessing``, and
``save_model(output_dir)`` also writes the model card, which states that the model was
trained with cross-entropy on the labels only (no teacher, no distillation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import Trainer

from hf_kd.data.device_views import IMAGES_COLUMN, DeviceViews
from hf_kd.model_card import ModelSummary
from hf_kd.model_folder import ModelFolderMixin, dataset_sizes
from hf_kd.preprocessing import ImagePreprocessing


class ClassifierTrainer(ModelFolderMixin, Trainer):
    """transformers' ``Trainer`` with the model's ``preprocessing`` for decode-once batches.

    Args:
        preprocessing: how the model's ``pixel_values`` are sized and normalised; saved with
            the model.
        model_name: how the model card names the model, followed by the arguments it was
            built with when they change its architecture. Default: the Hub id or folder it
            was loaded from, else the timm architecture or model type.
        dataset_name: the training dataset as the card names it (a Hub id joins the card's
            ``datasets``).
        eval_split_name: the split of the latest evaluation, whose ``eval_accuracy`` the card
            reports (``"validation"``; ``"test"`` when you evaluate on the test split last).
        training_eval_split_name: the split of ``eval_dataset``, evaluated during training
            (``"validation"``); the card's curves name it.
        split_sizes: images per split for the card. Default: ``train`` and ``validation``
            from the lengths of ``train_dataset`` and ``eval_dataset`` when they have one.

    The card's accuracy is the ``eval_accuracy`` of the log history: pass a
    ``compute_metrics`` that returns ``accuracy`` (:func:`hf_kd.metrics.compute_accuracy_metrics`).
    """

    def __init__(
        self,
        *args: Any,
        preprocessing: ImagePreprocessing,
        model_name: str | None = None,
        dataset_name: str | None = None,
        eval_split_name: str = "validation",
        training_eval_split_name: str = "validation",
        split_sizes: Mapping[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.device_views = DeviceViews(preprocessing)
        self.student_preprocessing = preprocessing
        # counted now, before Accelerate may wrap or shard the model
        self.student_summary = ModelSummary.of(self.model, model_name)
        self.dataset_name = dataset_name
        self.eval_split_name = eval_split_name
        self.training_eval_split_name = training_eval_split_name
        self.split_sizes = (
            dict(split_sizes)
            if split_sizes is not None
            else dataset_sizes(train=self.train_dataset, validation=self.eval_dataset)
        )

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        inputs = super()._prepare_inputs(inputs)
        return self.device_views(inputs) if IMAGES_COLUMN in inputs else inputs

    def card_objective_fields(self) -> dict[str, Any]:
        """The card's objective: cross-entropy only, no teacher and no distillation method."""
        return {"teacher": None, "method": None, "kd_weight": 0.0}
