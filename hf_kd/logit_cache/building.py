"""Run a teacher once over a dataset split and store its logits: :func:`cache_teacher_logits`."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal, get_args

import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from hf_kd.data.decoded import decode_split
from hf_kd.data.device_views import apply_view_params, model_input, replayed_view_params
from hf_kd.data.loading import IMAGE_COLUMN, LABEL_COLUMN, ROW_INDEX_COLUMN
from hf_kd.data.transforms import (
    AUGMENTATIONS,
    VIEW_INDEX_COLUMN,
    Augmentation,
    BatchTransform,
    ViewReplay,
    build_transforms,
)
from hf_kd.logit_cache.fingerprint import (
    dataset_identity,
    preprocessing_identity,
    row_indices_and_labels,
    teacher_identity,
)
from hf_kd.logit_cache.storage import (
    CacheWriter,
    StorageDtype,
    TeacherLogitCache,
    load_teacher_logit_cache,
)
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.progress import progress_bar

logger = logging.getLogger(__name__)

CacheDataPath = Literal["pil", "decoded"]
CACHE_DATA_PATHS: tuple[str, ...] = get_args(CacheDataPath)


def cache_teacher_logits(
    teacher: torch.nn.Module,
    dataset_split: Dataset,
    *,
    preprocessing: ImagePreprocessing,
    output_path: str | os.PathLike[str],
    split_name: str,
    batch_size: int = 64,
    dtype: StorageDtype = "float16",
    top_k: int | None = None,
    augment: Augmentation = "none",
    num_views: int = 1,
    view_seed: int = 0,
    view_size: tuple[int, int] | None = None,
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    overwrite: bool = False,
    source: Mapping[str, Any] | None = None,
    disable_tqdm: bool = False,
    data_path: CacheDataPath = "pil",
    decoded_cache_dir: str | os.PathLike[str] | None = None,
) -> TeacherLogitCache:
    """Run ``teacher`` once over every row (and view) of ``dataset_split``; store its logits.

    The teacher runs in eval mode under ``torch.inference_mode`` (its train/eval mode is
    restored afterwards), on the device of its parameters, optionally under
    ``torch.autocast(dtype=autocast_dtype)``; its logits are stored from float32. Training
    with the cache (:func:`hf_kd.with_cached_teacher_logits`) then never runs the teacher, so
    every student and method trained on this split shares one teacher pass.

    Augmentation. Cached logits are only right when the student sees the pixels the teacher
    saw. With ``augment="none"`` one plain view per row is cached, and the student must train
    without augmentation. With ``augment="default"`` or ``"crop"`` the teacher's logits of
    ``num_views`` augmented views per row are cached, each view drawn from a generator seeded
    with ``(view_seed, row_index, view)`` (:class:`hf_kd.data.ViewReplay`); in training each
    example picks one of its views at random and the student's transform replays that view's
    crop and flip exactly. The student then sees ``num_views`` fixed augmentations of each
    image instead of fresh ones every epoch (as in FKD, Shen and Xing, "A Fast Knowledge
    Distillation Framework for Visual Recognition", ECCV 2022): more views, more variety,
    at ``num_views`` teacher passes per image and ``num_views`` times the storage.

    Args:
        teacher: the frozen teacher, ``teacher(pixel_values=...).logits``.
        dataset_split: a split in the standard layout (:func:`hf_kd.data.load_image_dataset`:
            ``image``, ``label``, ``row_index``); a transform set on it is ignored.
        preprocessing: the teacher's resolution and normalisation
            (:func:`hf_kd.models.preprocessing_for`).
        output_path: the cache directory (``logits.parquet`` and ``metadata.json``).
        split_name: the split's name (``"train"``), recorded and checked at load time.
        batch_size: images per teacher forward.
        dtype: ``"float16"`` (half the storage; logits rounded to about 3 significant digits)
            or ``"float32"``.
        top_k: keep only the ``top_k`` largest logits of each row and one fill value for the
            rest (see :mod:`hf_kd.logit_cache.storage` for what this does to the KD target);
            ``None`` keeps all.
        augment: ``"none"``, ``"crop"`` or ``"default"``, as in
            :func:`hf_kd.data.build_transforms`.
        num_views: augmented views per row (1 when ``augment="none"``).
        view_seed: seed of the views' augmentation parameters.
        view_size: the size at which views are built (the teacher's input size by default);
            a student of another size gets each view resized to its own.
        autocast_dtype: run the teacher under autocast in this dtype (``torch.bfloat16``).
        num_workers: ``DataLoader`` workers decoding images.
        overwrite: replace a cache already at ``output_path``.
        source: informational names stored in the metadata (teacher and dataset ids).
        disable_tqdm: hide the progress bar over the views (:func:`hf_kd.progress.progress_bar`).
        data_path: how the teacher's views are made, as training will make the student's:
            ``"pil"`` (:func:`hf_kd.data.build_transforms`) or ``"decoded"`` (decode once,
            :func:`hf_kd.data.decode_split` into ``decoded_cache_dir``, then augment, resize
            and normalise on the teacher's device, :class:`hf_kd.data.DeviceViews`). The two
            draw the same views; resizes differ slightly (PIL vs ``torch``), so the path is
            part of the cache's identity and training on the other path refuses the cache.

    Returns:
        The cache, loaded.

    Raises:
        ValueError: bad arguments, a split without the standard columns, labels outside the
            teacher's classes, non-finite logits or logits beyond the float16 range.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    if augment == "none" and num_views != 1:
        raise ValueError(
            f"num_views={num_views} without augmentation would cache {num_views} identical "
            "views: use num_views=1, or augment='crop'/'default'"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if data_path not in CACHE_DATA_PATHS:
        raise ValueError(f"data_path must be one of {CACHE_DATA_PATHS}, got {data_path!r}")
    views = ViewReplay(
        view_size=tuple(view_size or preprocessing.image_size),
        interpolation=preprocessing.interpolation,
        num_views=num_views,
        seed=view_seed,
    )
    split = dataset_split.with_format(None)
    identity = {
        "teacher": teacher_identity(teacher),
        "dataset": dataset_identity(split),
        "split": split_name,
        "preprocessing": preprocessing_identity(preprocessing),
        "views": {
            "augment": augment,
            "view_size": list(views.view_size),
            "interpolation": views.interpolation,
            "num_views": views.num_views,
            "seed": views.seed,
            "data_path": data_path,
        },
        "storage": {"autocast": None if autocast_dtype is None else str(autocast_dtype)},
        "teacher_id2label": _id2label_of(teacher),
    }
    _check_labels(split, getattr(getattr(teacher, "config", None), "num_labels", None))
    writer = CacheWriter(output_path, dtype=dtype, top_k=top_k, overwrite=overwrite)
    parameter = next(teacher.parameters())
    was_training = teacher.training
    teacher.eval()
    started = time.perf_counter()
    batches = (
        _decoded_view_batches(
            split, preprocessing, augment, views, batch_size, parameter.device, decoded_cache_dir
        )
        if data_path == "decoded"
        else _pil_view_batches(split, preprocessing, augment, views, batch_size, num_workers)
    )
    bar = progress_bar(
        desc="Caching teacher logits",
        total=len(split) * num_views,
        unit="view",
        disable=disable_tqdm,
    )
    try:
        with bar:
            for batch in batches:
                pixel_values = batch["pixel_values"].to(parameter.device, dtype=parameter.dtype)
                with torch.inference_mode(), _precision(parameter.device, autocast_dtype):
                    logits = teacher(pixel_values=pixel_values).logits
                writer.write(
                    batch[ROW_INDEX_COLUMN], batch[VIEW_INDEX_COLUMN], batch["labels"], logits
                )
                bar.update(len(logits))
    finally:
        teacher.train(was_training)
    writer.finish(identity, source=dict(source or {}))
    logger.info(
        "cached the teacher's logits of %d views of %d rows in %.1f s at %s",
        writer.num_records,
        len(split),
        time.perf_counter() - started,
        output_path,
    )
    return load_teacher_logit_cache(output_path)


def _id2label_of(teacher: torch.nn.Module) -> dict[str, str] | None:
    """The teacher's class name per logit index (JSON keys), ``None`` without a config."""
    config = getattr(teacher, "config", None)
    if config is None:
        return None
    return {str(index): str(name) for index, name in config.id2label.items()}


def _pil_view_batches(
    split: Dataset,
    preprocessing: ImagePreprocessing,
    augment: Augmentation,
    views: ViewReplay,
    batch_size: int,
    num_workers: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """Every view of every row, made by the PIL transforms in ``DataLoader`` workers."""
    return iter(
        DataLoader(
            _RowViews(
                split,
                build_transforms(preprocessing, train=True, augment=augment, views=views),
                views.num_views,
            ),
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=_collate_views,
        )
    )


def _decoded_view_batches(
    split: Dataset,
    preprocessing: ImagePreprocessing,
    augment: Augmentation,
    views: ViewReplay,
    batch_size: int,
    device: torch.device,
    decoded_cache_dir: str | os.PathLike[str] | None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Every view of every row, from the decoded split, augmented and normalised on
    ``device`` as :class:`hf_kd.data.DeviceViews` does in training."""
    decoded = decode_split(split, views.view_size, views.interpolation, cache_dir=decoded_cache_dir)
    total = len(decoded) * views.num_views
    for start in range(0, total, batch_size):
        items = torch.arange(start, min(start + batch_size, total))
        positions, view_index = items // views.num_views, items % views.num_views
        row_index = decoded.row_index[positions]
        images = decoded.images[positions].to(device)
        if augment != "none":
            params = replayed_view_params(views, augment, row_index.numpy(), view_index.numpy())
            images = apply_view_params(images, params)
        yield {
            "pixel_values": model_input(images, preprocessing),
            ROW_INDEX_COLUMN: row_index,
            VIEW_INDEX_COLUMN: view_index,
            "labels": decoded.labels[positions],
        }


def _precision(
    device: torch.device, autocast_dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    if autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=autocast_dtype)


def _check_labels(split: Dataset, num_classes: int | None) -> None:
    if num_classes is None:
        return
    _, labels = row_indices_and_labels(split)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"the split's labels span {labels.min()}..{labels.max()} but the teacher predicts "
            f"{num_classes} classes: use a teacher trained on this dataset's classes"
        )


class _RowViews(torch.utils.data.Dataset):
    """Item ``i``: view ``i % num_views`` of row ``i // num_views``, as the teacher's input."""

    def __init__(self, split: Dataset, transform: BatchTransform, num_views: int) -> None:
        self.split = split
        self.transform = transform
        self.num_views = num_views

    def __len__(self) -> int:
        return len(self.split) * self.num_views

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.split[index // self.num_views]
        view_index = index % self.num_views
        pixel_values = self.transform(
            {
                IMAGE_COLUMN: [row[IMAGE_COLUMN]],
                ROW_INDEX_COLUMN: [row[ROW_INDEX_COLUMN]],
                VIEW_INDEX_COLUMN: [view_index],
            }
        )["pixel_values"][0]
        return {
            "pixel_values": pixel_values,
            ROW_INDEX_COLUMN: int(row[ROW_INDEX_COLUMN]),
            VIEW_INDEX_COLUMN: view_index,
            "labels": int(row[LABEL_COLUMN]),
        }


def _collate_views(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        **{
            key: torch.tensor([example[key] for example in examples], dtype=torch.int64)
            for key in (ROW_INDEX_COLUMN, VIEW_INDEX_COLUMN, "labels")
        },
    }
