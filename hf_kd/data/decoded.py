"""Decode once: a split kept in memory as uint8 canonical views, batches built by indexing.

:func:`decode_split` decodes every image of a split once to its canonical view, uint8
``[N, 3, H, W]`` (decoded, converted to RGB, resized and centre-cropped exactly as
:func:`hf_kd.data.build_transforms` does before it augments), and caches the result on disk
as safetensors, keyed by the split's ``datasets`` fingerprint (``Dataset._fingerprint``:
any change of the data or of the operations that made the split changes it), the view size
and the interpolation; the file is written to a temporary name and renamed, so concurrent
processes never read a partial file. :class:`DecodedImages` serves it to a ``DataLoader``:
``__getitems__`` builds a whole batch by indexing, ``images`` (uint8) with the augmentation
drawn per example as ``view_params``; :class:`hf_kd.data.DeviceViews` (which
:class:`hf_kd.trainer.DistillationTrainer` applies in ``_prepare_inputs``) augments,
resizes and normalises on the training device. An epoch then costs no decoding at all.

Use it when the split fits in memory (:func:`decoded_size_bytes`); :mod:`hf_kd.data.pipeline`
chooses between this path and the PIL one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
from datasets import Dataset
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from hf_kd.data.device_views import (
    IMAGES_COLUMN,
    VIEW_PARAMS_COLUMN,
    random_view_params,
    replayed_view_params,
)
from hf_kd.data.loading import IMAGE_COLUMN, LABEL_COLUMN, ROW_INDEX_COLUMN
from hf_kd.data.transforms import (
    AUGMENTATIONS,
    TEACHER_LOGITS_COLUMN,
    Augmentation,
    load_rgb_image,
    resize_and_crop,
)
from hf_kd.preprocessing import pil_resampling

if TYPE_CHECKING:
    from hf_kd.logit_cache.storage import TeacherLogitCache

logger = logging.getLogger(__name__)

DECODED_FORMAT_VERSION = "1"
DECODE_BATCH_ROWS = 256


def default_decoded_cache_dir() -> Path:
    """``<HF_DATASETS_CACHE>/hf_kd_decoded``: next to the datasets' own cache files."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "hf_kd_decoded"


def decoded_size_bytes(num_rows: int, view_size: tuple[int, int]) -> int:
    """Memory of ``num_rows`` decoded uint8 RGB views of ``(height, width)``."""
    return num_rows * 3 * view_size[0] * view_size[1]


@dataclass(frozen=True)
class DecodedSplit:
    """A split's canonical views: ``images`` uint8 ``[N, 3, H, W]``, ``labels`` and
    ``row_index`` int64 ``[N]``, in the split's order."""

    images: Tensor
    labels: Tensor
    row_index: Tensor

    @property
    def view_size(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def __len__(self) -> int:
        return len(self.labels)


def decode_split(
    split: Dataset,
    view_size: tuple[int, int],
    interpolation: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DecodedSplit:
    """Decode every image of ``split`` (standard layout) once to its canonical view.

    The result is cached in ``cache_dir`` (default :func:`default_decoded_cache_dir`) under a
    name derived from ``split._fingerprint``, ``view_size`` and ``interpolation``, and read
    back (safetensors: no code runs on load) whenever the same split is decoded again.

    Raises:
        ValueError: a split without ``image``/``label``/``row_index``, or a corrupt image
            (naming its row).
    """
    missing = [
        c for c in (IMAGE_COLUMN, LABEL_COLUMN, ROW_INDEX_COLUMN) if c not in split.column_names
    ]
    if missing:
        raise ValueError(
            f"the split has no column(s) {missing}; columns: {split.column_names}. Load it with "
            "hf_kd.data.load_image_dataset"
        )
    pil_resampling(interpolation)
    height, width = view_size
    key = hashlib.sha256(
        f"{DECODED_FORMAT_VERSION}:{split._fingerprint}:{height}x{width}:{interpolation}".encode()
    ).hexdigest()[:24]
    path = Path(cache_dir or default_decoded_cache_dir()) / f"{key}.safetensors"
    if path.is_file():
        logger.info("decoded images of %d rows read from %s", len(split), path)
        return _read(path)
    logger.info(
        "decoding %d images once to %dx%d uint8 (cache: %s)", len(split), height, width, path
    )
    plain = split.with_format(None)
    images = np.empty((len(plain), height, width, 3), dtype=np.uint8)
    for start in range(0, len(plain), DECODE_BATCH_ROWS):
        rows = plain[start : start + DECODE_BATCH_ROWS]
        for offset, (stored, row_index) in enumerate(
            zip(rows[IMAGE_COLUMN], rows[ROW_INDEX_COLUMN], strict=True)
        ):
            image = load_rgb_image(stored, where=f"column {IMAGE_COLUMN!r}, row {row_index}")
            images[start + offset] = np.asarray(resize_and_crop(image, view_size, interpolation))
    columns = plain.select_columns([LABEL_COLUMN, ROW_INDEX_COLUMN]).with_format("numpy")[:]
    decoded = DecodedSplit(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        labels=torch.as_tensor(np.asarray(columns[LABEL_COLUMN], dtype=np.int64)),
        row_index=torch.as_tensor(np.asarray(columns[ROW_INDEX_COLUMN], dtype=np.int64)),
    )
    _write_atomically(decoded, path, {"fingerprint": split._fingerprint, "key": key})
    return decoded


def _write_atomically(decoded: DecodedSplit, path: Path, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".partial")
    os.close(handle)
    try:
        tensors = {
            "images": decoded.images,
            "labels": decoded.labels,
            "row_index": decoded.row_index,
        }
        save_file(tensors, partial, metadata={"format_version": DECODED_FORMAT_VERSION, **metadata})
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _read(path: Path) -> DecodedSplit:
    with safe_open(path, framework="pt") as file:
        if (file.metadata() or {}).get("format_version") != DECODED_FORMAT_VERSION:
            raise ValueError(f"{path} is not a decoded split of this hf-kd version: delete it")
        return DecodedSplit(
            **{name: file.get_tensor(name) for name in ("images", "labels", "row_index")}
        )


class DecodedImages(torch.utils.data.Dataset):
    """A :class:`DecodedSplit` as a map-style dataset whose batches are built by indexing.

    A batch (``__getitems__``, which ``DataLoader`` calls with a batch's indices) holds
    ``images`` uint8 ``[B, 3, H, W]`` and ``labels`` int64 ``[B]``; when training with
    augmentation, ``view_params`` ``[B, 3]`` (fresh draws from the global torch generator,
    seeded by the Trainer); with a teacher-logit cache (:meth:`with_teacher_logits`), each
    example picks one of its cached views at random, gets that view's replayed ``view_params``
    and its ``teacher_logits`` (float32). :func:`collate_decoded_batch` is its collator, and
    :class:`hf_kd.data.DeviceViews` turns the batch into model inputs on the device.
    """

    def __init__(
        self,
        decoded: DecodedSplit,
        *,
        train: bool,
        augment: Augmentation = "default",
        teacher_logits: TeacherLogitCache | None = None,
    ) -> None:
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        self.decoded = decoded
        self.train = train
        self.augment: str = augment if train else "none"
        self.teacher_logits = teacher_logits

    def __len__(self) -> int:
        return len(self.decoded)

    def with_teacher_logits(self, cache: TeacherLogitCache) -> DecodedImages:
        """A training copy whose batches carry the cache's logits and replay its views."""
        return DecodedImages(self.decoded, train=True, augment=cache.augment, teacher_logits=cache)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        positions = torch.as_tensor(indices, dtype=torch.int64)
        batch = {
            IMAGES_COLUMN: self.decoded.images[positions],
            "labels": self.decoded.labels[positions],
        }
        if self.teacher_logits is not None:
            rows = self.decoded.row_index[positions].numpy()
            view_indices = torch.randint(self.teacher_logits.num_views, (len(rows),))
            logits = torch.from_numpy(self.teacher_logits.teacher_logits(rows))
            batch[TEACHER_LOGITS_COLUMN] = logits[torch.arange(len(rows)), view_indices]
            if self.augment != "none":
                batch[VIEW_PARAMS_COLUMN] = replayed_view_params(
                    self.teacher_logits.views, self.augment, rows, view_indices.numpy()
                )
        elif self.augment != "none":
            batch[VIEW_PARAMS_COLUMN] = random_view_params(
                len(positions), self.decoded.view_size, self.augment
            )
        return batch

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {key: value[0] for key, value in self.__getitems__([index]).items()}


def collate_decoded_batch(
    data: Mapping[str, Tensor] | Sequence[Mapping[str, Any]],
) -> dict[str, Tensor]:
    """The collator of :class:`DecodedImages`: a batch from ``__getitems__`` passes as is;
    single examples (``dataset[i]``) are stacked."""
    if isinstance(data, Mapping):
        return dict(data)
    if not data:
        raise ValueError("cannot collate an empty list of examples")
    return {key: torch.stack([example[key] for example in data]) for key in data[0]}
