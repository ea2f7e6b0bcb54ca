"""``ClassifierTrainer``: transformers' ``Trainer`` for a plain classifier (a teacher trained
with cross-entropy) fed by either data path of :mod:`hf_kd.data.pipeline`.

On the decode-once path a batch holds uint8 ``images`` and their ``view_params``;
``_prepare_inputs`` turns them into ``pixel_values`` on the device
(:class:`hf_kd.data.DeviceViews`), as :class:`hf_kd.trainer.DistillationTrainer` does.
PIL-path batches pass through unchanged.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from hf_kd.data.device_views import IMAGES_COLUMN, DeviceViews
from hf_kd.preprocessing import ImagePreprocessing


class ClassifierTrainer(Trainer):
    """transformers' ``Trainer`` with the model's ``preprocessing`` for decode-once batches."""

    def __init__(self, *args: Any, preprocessing: ImagePreprocessing, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.device_views = DeviceViews(preprocessing)

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        inputs = super()._prepare_inputs(inputs)
        return self.device_views(inputs) if IMAGES_COLUMN in inputs else inputs
