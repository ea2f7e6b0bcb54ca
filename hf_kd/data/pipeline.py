"""One entry point for a split's data path: decode once when it fits in memory, PIL otherwise.

* ``"decoded"`` (:mod:`hf_kd.data.decoded`): every image decoded once to a uint8 canonical
  view (cached on disk), batches built by indexing, augmentation, resize and normalisation
  per batch on the training device (:class:`hf_kd.data.DeviceViews`, applied by
  :class:`hf_kd.trainer.DistillationTrainer`). Fastest when the split fits in memory.
* ``"pil"``: ``Dataset.with_transform(build_transforms(...))``: every image decoded and
  augmented with PIL each time it is read (``DataLoader`` workers scale it). For any size.
* ``"auto"``: ``"decoded"`` when the split's decoded views fit in ``memory_budget_mb``,
  else ``"pil"``.

Both paths give the same views with the same augmentation distributions; an evaluation
split gives the same tensors on both (up to the float rounding of the normalisation).
Streaming (splits too large to download first) is :mod:`hf_kd.data.streaming`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from datasets import Dataset

from hf_kd.data.decoded import (
    DecodedImages,
    collate_decoded_batch,
    decode_split,
    decoded_size_bytes,
)
from hf_kd.data.transforms import Augmentation, build_transforms, collate_image_batch
from hf_kd.preprocessing import ImagePreprocessing

logger = logging.getLogger(__name__)

DataPath = Literal["auto", "decoded", "pil"]
DATA_PATHS: tuple[str, ...] = get_args(DataPath)
DEFAULT_MEMORY_BUDGET_MB = 4096


@dataclass(frozen=True)
class PreparedSplit:
    """A split ready for a Trainer: its dataset, the collator to use, the path chosen."""

    dataset: Any
    collator: Callable[[Any], dict[str, Any]]
    data_path: str


def view_size_of(
    preprocessing: ImagePreprocessing, teacher_preprocessing: ImagePreprocessing | None
) -> tuple[int, int]:
    """The canonical view's size: the largest input size among the models fed."""
    targets = [preprocessing] + ([teacher_preprocessing] if teacher_preprocessing else [])
    return (
        max(target.image_size[0] for target in targets),
        max(target.image_size[1] for target in targets),
    )


def choose_data_path(
    requested: str, num_rows: int, view_size: tuple[int, int], memory_budget_mb: float
) -> str:
    """``"decoded"`` or ``"pil"`` for a ``requested`` path of ``"auto"``/``"decoded"``/``"pil"``."""
    if requested not in DATA_PATHS:
        raise ValueError(
            f"data_path must be one of {DATA_PATHS}, got {requested!r} (a streamed split is "
            "prepared by hf_kd.data.streaming)"
        )
    if requested != "auto":
        return requested
    needed_mb = decoded_size_bytes(num_rows, view_size) / 2**20
    if needed_mb <= memory_budget_mb:
        return "decoded"
    logger.info(
        "the split's decoded views need %.0f MB, over the %.0f MB budget: PIL data path",
        needed_mb,
        memory_budget_mb,
    )
    return "pil"


def prepare_image_split(
    split: Dataset,
    *,
    train: bool,
    preprocessing: ImagePreprocessing,
    teacher_preprocessing: ImagePreprocessing | None = None,
    augment: Augmentation = "default",
    data_path: str = "auto",
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    cache_dir: str | os.PathLike[str] | None = None,
) -> PreparedSplit:
    """``split`` (standard layout) on the chosen data path (module docstring).

    Training splits are viewed at the largest of the student's and the teacher's sizes, so
    each model gets its own resize of the same augmented view; evaluation splits at the
    student's (``teacher_preprocessing`` is ignored), exactly as the PIL evaluation
    transform does. ``cache_dir`` is where decoded views are cached
    (:func:`hf_kd.data.decode_split`).
    """
    teacher = teacher_preprocessing if train and teacher_preprocessing != preprocessing else None
    view_size = view_size_of(preprocessing, teacher)
    chosen = choose_data_path(data_path, len(split), view_size, memory_budget_mb)
    if chosen == "decoded":
        decoded = decode_split(split, view_size, preprocessing.interpolation, cache_dir=cache_dir)
        return PreparedSplit(
            DecodedImages(decoded, train=train, augment=augment), collate_decoded_batch, chosen
        )
    transform = build_transforms(
        preprocessing, train=train, augment=augment, teacher_preprocessing=teacher
    )
    return PreparedSplit(split.with_transform(transform), collate_image_batch, chosen)
