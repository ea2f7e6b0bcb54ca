"""Image classification data: loading (:mod:`.loading`, :mod:`.digits`) and transforms
(:mod:`.transforms`)."""

from hf_kd.data.digits import load_digits_dataset
from hf_kd.data.loading import (
    IMAGE_COLUMN,
    LABEL_COLUMN,
    ROW_INDEX_COLUMN,
    ImageClassificationData,
    load_image_dataset,
)
from hf_kd.data.transforms import (
    TEACHER_LOGITS_COLUMN,
    VIEW_INDEX_COLUMN,
    ViewReplay,
    build_transforms,
    collate_image_batch,
    load_rgb_image,
)

__all__ = [
    "IMAGE_COLUMN",
    "LABEL_COLUMN",
    "ROW_INDEX_COLUMN",
    "TEACHER_LOGITS_COLUMN",
    "VIEW_INDEX_COLUMN",
    "ImageClassificationData",
    "ViewReplay",
    "build_transforms",
    "collate_image_batch",
    "load_digits_dataset",
    "load_image_dataset",
    "load_rgb_image",
]
