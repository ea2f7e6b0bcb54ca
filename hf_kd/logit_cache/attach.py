"""Training data with cached teacher logits: :func:`with_cached_teacher_logits`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from hf_kd.data.decoded import DecodedImages
from hf_kd.data.loading import ROW_INDEX_COLUMN
from hf_kd.data.transforms import (
    AUGMENTATIONS,
    TEACHER_LOGITS_COLUMN,
    VIEW_INDEX_COLUMN,
    Augmentation,
    build_transforms,
)
from hf_kd.logit_cache.fingerprint import row_indices_and_labels
from hf_kd.logit_cache.storage import TeacherLogitCache
from hf_kd.preprocessing import ImagePreprocessing


def with_cached_teacher_logits(
    split: Dataset | DecodedImages,
    cache: TeacherLogitCache,
    *,
    student: torch.nn.Module,
    preprocessing: ImagePreprocessing | None = None,
    augment: Augmentation | None = None,
) -> Dataset | DecodedImages:
    """``split`` with a training transform that adds the teacher's cached logits to each example.

    ``split`` is a ``datasets.Dataset`` (the PIL path; ``preprocessing`` is the student's) or
    a :class:`hf_kd.data.DecodedImages` (the decode-once path: its batches then carry the
    cached logits and each chosen view's replayed ``view_params``; the trainer's
    :class:`hf_kd.data.DeviceViews` applies the student's preprocessing). The cache must have
    been made on the same path (``cache_teacher_logits(..., data_path=...)``).

    Each example is joined to the cache by ``row_index``. When the cache holds several
    augmented views per row, each access picks one view ``k`` at random (the global torch
    generator, seeded by the Trainer and per ``DataLoader`` worker, so views vary between
    epochs) and the transform replays view ``k``'s crop and flip
    (:class:`hf_kd.data.ViewReplay`): the student's ``pixel_values`` show exactly the pixels
    the teacher's ``teacher_logits`` were computed on, resized and normalised for the student
    by ``preprocessing``. Examples come out as ``build_transforms`` makes them, plus
    ``teacher_logits`` (float32 ``[num_classes]``); ``hf_kd.data.collate_image_batch`` stacks
    them, and the trainer then skips the teacher.

    ``student`` is the model that will learn from these logits: its label map must be the
    teacher's that the cache records (:meth:`TeacherLogitCache.check_student`, the check
    ``DistillationTrainer`` makes of a live teacher), or its logit ``c`` would be trained
    towards another class's teacher logit.

    Augmentation follows the cache: a cache of plain views (``augment="none"``) trains without
    augmentation; asking for another ``augment`` than the cache's raises, because random
    augmentation would show the student other pixels than the teacher saw.

    Raises:
        ValueError: the student's classes differ from the cached teacher's, ``augment``
            differs from the cache's, the cache was made on the other data path, a decoded
            split of another view size than the cache's, the split lacks ``row_index``, rows
            absent from the cache, or labels that differ from the
            cached ones (another dataset).
    """
    cache.check_student(student)
    if augment is not None and augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    if augment is not None and augment != cache.augment:
        raise ValueError(
            f"training with augment={augment!r} from a cache of augment={cache.augment!r} views "
            "would show the student other pixels than the teacher saw. Train with "
            f"augment={cache.augment!r} (or leave augment unset), or rebuild the cache with "
            f"cache_teacher_logits(..., augment={augment!r}, num_views=K)"
            + (" (K > 1)" if augment != "none" else "")
        )
    if isinstance(split, DecodedImages):
        cache.require_data_path("decoded")
        if split.decoded.view_size != tuple(cache.views.view_size):
            # the cached shifts are drawn for the cache's view size: on other views they
            # would pick other pixels than the teacher saw (or index out of range)
            raise ValueError(
                f"the split was decoded at {split.decoded.view_size} but the cache's views are "
                f"{tuple(cache.views.view_size)}: decode the split at the cache's view size "
                "(decode_split(..., view_size=cache.views.view_size)) or rebuild the cache"
            )
        _check_labels(split.decoded.row_index.numpy(), split.decoded.labels.numpy(), cache)
        return split.with_teacher_logits(cache)
    cache.require_data_path("pil")
    if preprocessing is None:
        raise ValueError("the PIL path needs preprocessing= (the student's)")
    if ROW_INDEX_COLUMN not in split.column_names:
        raise ValueError(
            f"the split has no {ROW_INDEX_COLUMN!r} column to join the cache on; columns: "
            f"{split.column_names}. Load it with hf_kd.data.load_image_dataset"
        )
    _check_labels(*row_indices_and_labels(split), cache)
    transform = build_transforms(
        preprocessing, train=True, augment=cache.augment, views=cache.views
    )

    def add_cached_teacher_logits(batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        row_indices = np.asarray(batch[ROW_INDEX_COLUMN], dtype=np.int64)
        logits = torch.from_numpy(cache.teacher_logits(row_indices))
        view_indices = torch.randint(cache.num_views, (len(row_indices),))
        chosen = logits[torch.arange(len(row_indices)), view_indices]
        return transform(
            {
                **batch,
                VIEW_INDEX_COLUMN: view_indices.tolist(),
                TEACHER_LOGITS_COLUMN: list(chosen),
            }
        )

    return split.with_transform(add_cached_teacher_logits)


def _check_labels(row_indices: np.ndarray, labels: np.ndarray, cache: TeacherLogitCache) -> None:
    cached_labels = cache.labels[cache.positions(row_indices)]
    wrong = np.flatnonzero(cached_labels != labels)
    if len(wrong):
        shown = ", ".join(
            f"row_index {row_indices[i]}: label {labels[i]} vs cached {cached_labels[i]}"
            for i in wrong[:5]
        )
        raise ValueError(
            f"{len(wrong)} row(s) of the split have other labels than in the teacher-logit cache "
            f"at {cache.path} ({shown}): it was made for another dataset"
        )
