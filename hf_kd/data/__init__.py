"""Image classification data: loading (:mod:`.loading`, :mod:`.digits`), the PIL transforms
(:mod:`.transforms`), decode once with views built on the device (:mod:`.decoded`,
:mod:`.device_views`) and the choice between them (:mod:`.pipeline`)."""

from hf_kd.data.decoded import (
    DecodedImages,
    DecodedSplit,
    collate_decoded_batch,
    decode_split,
)
from hf_kd.data.device_views import DeviceViews
from hf_kd.data.digits import load_digits_dataset
from hf_kd.data.loading import (
    IMAGE_COLUMN,
    LABEL_COLUMN,
    ROW_INDEX_COLUMN,
    ImageClassificationData,
    load_image_dataset,
)
from hf_kd.data.pipeline import DATA_PATHS, DataPath, PreparedSplit, prepare_image_split
from hf_kd.data.transforms import (
    TEACHER_LOGITS_COLUMN,
    VIEW_INDEX_COLUMN,
    ViewReplay,
    build_transforms,
    collate_image_batch,
    load_rgb_image,
)

__all__ = [
    "DATA_PATHS",
    "IMAGE_COLUMN",
    "LABEL_COLUMN",
    "ROW_INDEX_COLUMN",
    "TEACHER_LOGITS_COLUMN",
    "VIEW_INDEX_COLUMN",
    "DataPath",
    "DecodedImages",
    "DecodedSplit",
    "DeviceViews",
    "ImageClassificationData",
    "PreparedSplit",
    "ViewReplay",
    "build_transforms",
    "collate_decoded_batch",
    "collate_image_batch",
    "decode_split",
    "load_digits_dataset",
    "load_image_dataset",
    "load_rgb_image",
    "prepare_image_split",
]
