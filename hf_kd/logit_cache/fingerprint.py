"""What a teacher-logit cache depends on, as comparable identities, and what differs between two.

* the teacher: its class, its config (without bookkeeping keys) and a SHA-256 of its
  ``state_dict`` bytes (parameters and buffers, in name order, with dtype and shape);
* the dataset split: its size, a SHA-256 of its ``(row_index, label)`` pairs in
  ``row_index`` order (all rows: a shuffled or re-ordered copy of the split is the same
  split), and a SHA-256 of the stored bytes of ``IMAGE_SAMPLE_SIZE`` images at evenly
  spaced ``row_index`` ranks. Hashing every image would read the whole dataset (hundreds of
  GB for ImageNet); the sample catches another dataset, another split or a re-encoded copy,
  but not an edit confined to images outside the sample;
* the teacher's preprocessing (:class:`~hf_kd.preprocessing.ImagePreprocessing` fields) and
  the views (augmentation, view geometry, number of views, seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from PIL import Image

from hf_kd.data.loading import IMAGE_COLUMN, LABEL_COLUMN, ROW_INDEX_COLUMN
from hf_kd.preprocessing import ImagePreprocessing

IMAGE_SAMPLE_SIZE = 64
# config keys that do not change what the teacher computes: version stamps, the checkpoint's
# path, the weights' dtype (covered by the weights hash), timm's data config (the
# preprocessing is compared on its own) and transformers' private attributes ("_...").
IGNORED_CONFIG_KEYS = frozenset(
    {"transformers_version", "architectures", "dtype", "torch_dtype", "pretrained_cfg"}
)


def sha256_of_json(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys, tuples as lists)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def teacher_identity(teacher: torch.nn.Module) -> dict[str, str]:
    """``{"class", "config_sha256", "weights_sha256"}`` of a model."""
    config = getattr(teacher, "config", None)
    config_dict = config.to_dict() if config is not None else {}
    relevant = {
        key: value
        for key, value in config_dict.items()
        if key not in IGNORED_CONFIG_KEYS and not key.startswith("_")
    }
    return {
        "class": type(teacher).__name__,
        "config_sha256": sha256_of_json(relevant),
        "weights_sha256": weights_sha256(teacher),
    }


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of every tensor of ``module.state_dict()``: name, dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def dataset_identity(split: Dataset) -> dict[str, Any]:
    """``{"num_rows", "rows_sha256", "image_sample_sha256"}`` of a split in the standard layout.

    Raises:
        ValueError: an empty split, or one without ``row_index``, ``label`` or ``image``.
    """
    missing = [
        column
        for column in (IMAGE_COLUMN, LABEL_COLUMN, ROW_INDEX_COLUMN)
        if column not in split.column_names
    ]
    if missing:
        raise ValueError(
            f"the split has no column(s) {missing}; columns: {split.column_names}. Load it with "
            "hf_kd.data.load_image_dataset, which adds row_index and names image and label"
        )
    if len(split) == 0:
        raise ValueError("the split is empty")
    row_index, labels = row_indices_and_labels(split)
    order = np.argsort(row_index, kind="stable")
    if np.any(np.diff(row_index[order]) == 0):
        raise ValueError("row_index has duplicates: it must identify each row of the split")
    rows = hashlib.sha256(row_index[order].tobytes())
    rows.update(labels[order].tobytes())
    ranks = np.unique(np.linspace(0, len(order) - 1, min(len(order), IMAGE_SAMPLE_SIZE)).round())
    sampled = split.with_format(None).select(order[ranks.astype(np.int64)])[IMAGE_COLUMN]
    images = hashlib.sha256()
    for stored in sampled:
        images.update(_image_bytes(stored))
    return {
        "num_rows": len(split),
        "rows_sha256": rows.hexdigest(),
        "image_sample_sha256": images.hexdigest(),
    }


def row_indices_and_labels(split: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """``row_index`` and ``label`` of every row, in the split's order, as int64 arrays."""
    columns = split.select_columns([ROW_INDEX_COLUMN, LABEL_COLUMN]).with_format("numpy")[:]
    return (
        np.asarray(columns[ROW_INDEX_COLUMN], dtype=np.int64),
        np.asarray(columns[LABEL_COLUMN], dtype=np.int64),
    )


def preprocessing_identity(preprocessing: ImagePreprocessing) -> dict[str, Any]:
    """The fields of ``preprocessing`` as JSON values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(preprocessing)))


def differences(
    what: str, stored: Mapping[str, Any], given: Mapping[str, Any], *, short_hashes: bool = True
) -> list[str]:
    """One line per key whose value differs: ``"<what> <key>: cache <a>, given <b>"``."""
    lines = []
    for key in sorted(set(stored) | set(given)):
        if stored.get(key) != given.get(key):
            lines.append(
                f"{what} {key}: cache {_shown(stored.get(key), short_hashes)}, "
                f"given {_shown(given.get(key), short_hashes)}"
            )
    return lines


def _shown(value: Any, short_hashes: bool) -> str:
    if short_hashes and isinstance(value, str) and len(value) == 64:
        return value[:12] + "..."
    return repr(value)


def _image_bytes(stored: Any) -> bytes:
    """The stored bytes of an image: encoded bytes, the file at its path, or decoded pixels."""
    if isinstance(stored, Image.Image):
        return f"{stored.mode}:{stored.size};".encode() + stored.tobytes()
    if isinstance(stored, Mapping):
        if stored.get("bytes") is not None:
            return bytes(stored["bytes"])
        if stored.get("path") is not None:
            with open(stored["path"], "rb") as file:
                return file.read()
    raise ValueError(f"cannot read the bytes of the stored image {stored!r}")
