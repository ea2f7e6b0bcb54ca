"""The on-disk teacher-logit cache: a parquet file of logits and a JSON file of metadata.

A cache is a directory::

    <output_path>/logits.parquet   one record per (row, view), written batch by batch
    <output_path>/metadata.json    identities (teacher, dataset, split, preprocessing, views),
                                   the teacher's id2label, storage (dtype, top_k, classes),
                                   fingerprint; written last

``logits.parquet`` loads with ``datasets.Dataset.from_parquet`` (or pandas, pyarrow). Its
columns: ``row_index`` (int64), ``view_index`` (int64), ``label`` (int64) and either
``logits`` (a fixed-size list of ``num_classes`` float16/float32 values) or, with ``top_k``,
``top_k_indices`` (int32), ``top_k_values`` (largest first) and ``rest_fill``.

Top-k reconstruction. A row is stored as its ``k`` largest logits and one fill value for the
``C - k`` others, the log-mean-exp of the dropped logits,
``fill = logsumexp(z_dropped) - log(C - k)``, and rebuilt densely at load time. At
temperature 1 the dropped classes keep exactly their total teacher probability, shared
equally, and the kept classes keep their exact probabilities; ``fill`` is finite and never
above the smallest kept logit. What it does to a KD target at temperature ``T != 1``: the
power-mean inequality gives the dropped classes together at least their true softened mass
for ``T > 1`` (at most for ``T < 1``), and their order among themselves (the "dark knowledge"
of the tail) is lost: a DKD-style non-target term sees a flat tail, and logit statistics
(logit standardisation, NormKD's per-sample temperature) see a smaller spread than the
teacher's. Use a dense cache when the tail matters; ``k`` around 10-20 keeps almost all of
the mass for ImageNet-scale heads.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from datasets import Dataset

from hf_kd.data.loading import LABEL_COLUMN, ROW_INDEX_COLUMN
from hf_kd.data.transforms import VIEW_INDEX_COLUMN, ViewReplay
from hf_kd.logit_cache.fingerprint import (
    dataset_identity,
    differences,
    preprocessing_identity,
    sha256_of_json,
    teacher_identity,
)
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.teacher import check_same_classes

logger = logging.getLogger(__name__)

StorageDtype = Literal["float16", "float32"]
STORAGE_DTYPES: tuple[str, ...] = get_args(StorageDtype)
CACHE_FORMAT_VERSION = 1
LOGITS_FILE = "logits.parquet"
METADATA_FILE = "metadata.json"
LOGITS_COLUMN = "logits"
TOP_K_INDICES_COLUMN = "top_k_indices"
TOP_K_VALUES_COLUMN = "top_k_values"
REST_FILL_COLUMN = "rest_fill"
FLOAT16_MAX = float(np.finfo(np.float16).max)
_ARROW_FLOATS = {"float16": pa.float16(), "float32": pa.float32()}


@dataclass(frozen=True)
class TeacherLogitCache:
    """A loaded teacher-logit cache: the teacher's logits of every row and view of one split.

    Rows are sorted by ``row_index``. ``values`` holds, in the stored dtype, the dense logits
    ``[rows, views, classes]``, or for a top-k cache the kept logits ``[rows, views, k]``
    with their class indices in ``top_k_indices`` and the rest's fill value in ``rest_fill``
    ``[rows, views]`` (see the module docstring). Use :meth:`teacher_logits` to read them.
    """

    path: str
    metadata: dict[str, Any]
    row_index: np.ndarray
    labels: np.ndarray
    values: np.ndarray
    top_k_indices: np.ndarray | None = None
    rest_fill: np.ndarray | None = None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of everything the logits depend on (teacher, data, preprocessing, views,
        storage)."""
        return self.metadata["fingerprint"]

    @property
    def num_rows(self) -> int:
        return len(self.row_index)

    @property
    def num_views(self) -> int:
        return int(self.metadata["views"]["num_views"])

    @property
    def num_classes(self) -> int:
        return int(self.metadata["storage"]["num_classes"])

    @property
    def augment(self) -> str:
        """The augmentation of the cached views (``"none"``: one plain view per row)."""
        return self.metadata["views"]["augment"]

    @property
    def data_path(self) -> str:
        """Which data path made the views: ``"pil"`` or ``"decoded"`` (caches made before the
        decoded path existed were made by PIL)."""
        return self.metadata["views"].get("data_path", "pil")

    def require_data_path(self, data_path: str) -> None:
        """Raise ``ValueError`` unless the cache's views were made by ``data_path``."""
        if self.data_path != data_path:
            raise ValueError(
                f"the teacher-logit cache at {self.path} was made on the {self.data_path!r} data "
                f"path but the student trains on the {data_path!r} one, whose resizes differ: "
                f"rebuild it with cache_teacher_logits(..., data_path={data_path!r}) or train on "
                f"the {self.data_path!r} path"
            )

    @property
    def views(self) -> ViewReplay:
        """The view geometry and seeds to replay: give it to ``build_transforms(views=...)``."""
        views = self.metadata["views"]
        return ViewReplay(
            view_size=tuple(views["view_size"]),
            interpolation=views["interpolation"],
            num_views=int(views["num_views"]),
            seed=int(views["seed"]),
        )

    @property
    def preprocessing(self) -> ImagePreprocessing:
        """The teacher's preprocessing the logits were computed with."""
        fields = self.metadata["preprocessing"]
        return ImagePreprocessing(
            image_size=tuple(fields["image_size"]),
            mean=tuple(fields["mean"]),
            std=tuple(fields["std"]),
            interpolation=fields["interpolation"],
        )

    @property
    def teacher_id2label(self) -> dict[int, str] | None:
        """The teacher's class name of each logit index; ``None`` when the cache does not
        record it (a teacher without a config, or a cache made before hf-kd recorded it)."""
        stored = self.metadata.get("teacher_id2label")
        return None if stored is None else {int(index): name for index, name in stored.items()}

    def check_student(self, student: torch.nn.Module) -> None:
        """Raise ``ValueError`` unless ``student``'s logit ``c`` means the cached teacher's
        class ``c``: :func:`hf_kd.teacher.check_same_classes`, the check of a live teacher.

        A cache that does not record the teacher's class names (made by an earlier hf-kd) is
        accepted when the class counts agree, with a warning that the order is unchecked, as
        for a live teacher without class names. A student without a config is not checked.
        """
        student_config = getattr(student, "config", None)
        if student_config is None:
            return
        teacher_id2label = self.teacher_id2label
        if teacher_id2label is None:
            logger.warning(
                "the teacher-logit cache at %s does not record the teacher's class names "
                "(made by an earlier hf-kd): only the number of classes is checked; rebuild "
                "it to check the class order",
                self.path,
            )
            teacher_id2label = {index: f"LABEL_{index}" for index in range(self.num_classes)}
        try:
            check_same_classes(teacher_id2label, student_config.id2label)
        except ValueError as error:
            raise ValueError(f"the teacher-logit cache at {self.path}: {error}") from error

    def positions(self, row_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Positions of ``row_indices`` in the cache; ``ValueError`` naming rows it lacks."""
        wanted = np.asarray(row_indices, dtype=np.int64)
        positions = np.searchsorted(self.row_index, wanted)
        found = positions < self.num_rows
        found[found] = self.row_index[positions[found]] == wanted[found]
        if not found.all():
            absent = wanted[~found]
            raise ValueError(
                f"the teacher-logit cache at {self.path} has no logits for {len(absent)} row(s), "
                f"row_index {absent[:10].tolist()}{'...' if len(absent) > 10 else ''}: it was "
                "made for another split or dataset"
            )
        return positions

    def teacher_logits(self, row_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Dense float32 logits ``[len(row_indices), num_views, num_classes]`` of these rows."""
        positions = self.positions(row_indices)
        if self.top_k_indices is None:
            return self.values[positions].astype(np.float32)
        assert self.rest_fill is not None
        dense = np.repeat(
            self.rest_fill[positions][..., None].astype(np.float32), self.num_classes, axis=-1
        )
        np.put_along_axis(
            dense,
            self.top_k_indices[positions].astype(np.int64),
            self.values[positions].astype(np.float32),
            axis=-1,
        )
        return dense


class CacheWriter:
    """Writes a cache batch by batch: :meth:`write` per batch of logits, :meth:`finish` once.

    The parquet file is written under a temporary name and ``metadata.json`` last, so a
    directory holding ``metadata.json`` always holds a complete cache.
    """

    def __init__(
        self,
        output_path: str | os.PathLike[str],
        *,
        dtype: StorageDtype,
        top_k: int | None,
        overwrite: bool,
    ) -> None:
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {STORAGE_DTYPES}, got {dtype!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be None (dense) or >= 1, got {top_k}")
        self.directory = Path(output_path)
        if (self.directory / METADATA_FILE).exists() and not overwrite:
            raise ValueError(
                f"{self.directory} already holds a teacher-logit cache: load it with "
                "load_teacher_logit_cache, or pass overwrite=True to replace it"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / METADATA_FILE).unlink(missing_ok=True)
        self.dtype = dtype
        self.top_k = top_k
        self.num_classes: int | None = None
        self.num_records = 0
        self._partial = self.directory / f"{LOGITS_FILE}.partial"
        self._writer: pq.ParquetWriter | None = None

    def write(
        self,
        row_index: torch.Tensor,
        view_index: torch.Tensor,
        labels: torch.Tensor,
        logits: torch.Tensor,
    ) -> None:
        """Store one batch: ``logits`` float ``[B, C]`` of rows ``row_index``, views
        ``view_index``. Raises ``ValueError`` on non-finite logits or, for float16, logits
        beyond its range (naming the rows)."""
        logits = logits.detach().float().cpu()
        if self.num_classes is None:
            self._start(logits.shape[1])
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits [B, {self.num_classes}], got {tuple(logits.shape)}")
        self._check_values(logits, row_index)
        columns: dict[str, pa.Array] = {
            ROW_INDEX_COLUMN: pa.array(row_index.numpy().astype(np.int64)),
            VIEW_INDEX_COLUMN: pa.array(view_index.numpy().astype(np.int64)),
            LABEL_COLUMN: pa.array(labels.numpy().astype(np.int64)),
        }
        if self.top_k is None:
            columns[LOGITS_COLUMN] = self._fixed_size_lists(logits.numpy(), self.dtype)
        else:
            kept, indices = logits.topk(self.top_k, dim=1)
            dropped = logits.scatter(1, indices, float("-inf"))
            fill = torch.logsumexp(dropped, dim=1) - math.log(self.num_classes - self.top_k)
            columns[TOP_K_INDICES_COLUMN] = self._fixed_size_lists(
                indices.numpy().astype(np.int32), None
            )
            columns[TOP_K_VALUES_COLUMN] = self._fixed_size_lists(kept.numpy(), self.dtype)
            columns[REST_FILL_COLUMN] = pa.array(fill.numpy().astype(self.dtype))
        assert self._writer is not None
        self._writer.write_table(pa.table(columns))
        self.num_records += len(logits)

    def finish(self, identity: dict[str, Any], source: dict[str, Any]) -> None:
        """Close the parquet file and write ``metadata.json`` with the identities, the storage
        settings, the fingerprint and ``source`` (informational names)."""
        if self._writer is None:
            raise ValueError("no logits were written: the split is empty")
        self._writer.close()
        os.replace(self._partial, self.directory / LOGITS_FILE)
        identity = {
            **identity,
            "storage": {
                **identity.get("storage", {}),
                "dtype": self.dtype,
                "top_k": self.top_k,
                "num_classes": self.num_classes,
            },
        }
        metadata = {
            "format_version": CACHE_FORMAT_VERSION,
            "fingerprint": sha256_of_json(identity),
            **identity,
            "num_records": self.num_records,
            "source": source,
        }
        partial = self.directory / f"{METADATA_FILE}.partial"
        partial.write_text(json.dumps(metadata, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(partial, self.directory / METADATA_FILE)

    def _start(self, num_classes: int) -> None:
        if self.top_k is not None and self.top_k >= num_classes:
            raise ValueError(
                f"top_k={self.top_k} keeps all of the teacher's {num_classes} classes: use "
                f"top_k=None (dense) or a top_k below {num_classes}"
            )
        self.num_classes = num_classes
        fields = [
            pa.field(ROW_INDEX_COLUMN, pa.int64()),
            pa.field(VIEW_INDEX_COLUMN, pa.int64()),
            pa.field(LABEL_COLUMN, pa.int64()),
        ]
        values = _ARROW_FLOATS[self.dtype]
        if self.top_k is None:
            fields.append(pa.field(LOGITS_COLUMN, pa.list_(values, num_classes)))
        else:
            fields += [
                pa.field(TOP_K_INDICES_COLUMN, pa.list_(pa.int32(), self.top_k)),
                pa.field(TOP_K_VALUES_COLUMN, pa.list_(values, self.top_k)),
                pa.field(REST_FILL_COLUMN, values),
            ]
        self._writer = pq.ParquetWriter(self._partial, pa.schema(fields))

    def _check_values(self, logits: torch.Tensor, row_index: torch.Tensor) -> None:
        finite = torch.isfinite(logits).all(dim=1)
        if not finite.all():
            rows = row_index[~finite][:10].tolist()
            raise ValueError(f"the teacher's logits are not finite for row_index {rows}")
        if self.dtype == "float16":
            too_large = logits.abs().amax(dim=1) > FLOAT16_MAX
            if too_large.any():
                rows = row_index[too_large][:10].tolist()
                raise ValueError(
                    f"the teacher's logits of row_index {rows} exceed the float16 range "
                    f"(|x| > {FLOAT16_MAX:g}): use dtype='float32'"
                )

    @staticmethod
    def _fixed_size_lists(array: np.ndarray, dtype: str | None) -> pa.FixedSizeListArray:
        flat = array.reshape(-1) if dtype is None else array.astype(dtype).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), array.shape[1])


def load_teacher_logit_cache(
    path: str | os.PathLike[str],
    *,
    teacher: torch.nn.Module | None = None,
    dataset_split: Dataset | None = None,
    split_name: str | None = None,
    preprocessing: ImagePreprocessing | None = None,
) -> TeacherLogitCache:
    """Load a cache written by :func:`hf_kd.cache_teacher_logits`, refusing one that does not fit.

    Each of ``teacher``, ``dataset_split``, ``split_name`` and ``preprocessing`` that is given
    is compared with what the cache was made for (see :mod:`hf_kd.logit_cache.fingerprint`):
    the teacher's class, config and weights; the split's rows, labels and sampled image bytes
    (any order of the same rows fits); the split's name; the teacher's preprocessing. Give all
    of them to be safe; hashing the teacher's weights reads them once.

    Raises:
        ValueError: a mismatch (the message names each difference), a missing or unreadable
            cache, or a cache of another format version.
    """
    directory = Path(path)
    metadata_file = directory / METADATA_FILE
    if not metadata_file.is_file() or not (directory / LOGITS_FILE).is_file():
        raise ValueError(
            f"no teacher-logit cache at {directory} (expected {METADATA_FILE} and {LOGITS_FILE}); "
            "make one with hf_kd.cache_teacher_logits or python -m hf_kd.logit_cache"
        )
    metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
    if metadata.get("format_version") != CACHE_FORMAT_VERSION:
        raise ValueError(
            f"the teacher-logit cache at {directory} has format version "
            f"{metadata.get('format_version')!r}; this hf-kd reads version {CACHE_FORMAT_VERSION}"
            ": rebuild it"
        )
    mismatches = []
    if teacher is not None:
        mismatches += differences("teacher", metadata["teacher"], teacher_identity(teacher))
    if dataset_split is not None:
        mismatches += differences("dataset", metadata["dataset"], dataset_identity(dataset_split))
    if split_name is not None and split_name != metadata["split"]:
        mismatches.append(f"split: cache {metadata['split']!r}, given {split_name!r}")
    if preprocessing is not None:
        mismatches += differences(
            "preprocessing", metadata["preprocessing"], preprocessing_identity(preprocessing)
        )
    if mismatches:
        raise ValueError(
            f"the teacher-logit cache at {directory} was made for another teacher, dataset, "
            "split or preprocessing; it differs in: " + "; ".join(mismatches) + ". Rebuild it "
            "for this setup (hf_kd.cache_teacher_logits or python -m hf_kd.logit_cache)"
        )
    return _read(directory, metadata)


def _read(directory: Path, metadata: dict[str, Any]) -> TeacherLogitCache:
    table = pq.read_table(directory / LOGITS_FILE)
    num_views = int(metadata["views"]["num_views"])
    order = _row_view_order(table, num_views, metadata["num_records"], directory)
    num_rows = len(order) // num_views

    def per_row(column: str) -> np.ndarray:
        """``column`` as ``[rows, views, ...]``, rows in ``row_index`` order."""
        values = _column_to_numpy(table.column(column))[order]
        return values.reshape(num_rows, num_views, *values.shape[1:])

    row_index = per_row(ROW_INDEX_COLUMN)[:, 0]
    labels = per_row(LABEL_COLUMN)[:, 0]
    if metadata["storage"]["top_k"] is None:
        return TeacherLogitCache(
            str(directory), metadata, row_index, labels, values=per_row(LOGITS_COLUMN)
        )
    return TeacherLogitCache(
        str(directory),
        metadata,
        row_index,
        labels,
        values=per_row(TOP_K_VALUES_COLUMN),
        top_k_indices=per_row(TOP_K_INDICES_COLUMN),
        rest_fill=per_row(REST_FILL_COLUMN),
    )


def _row_view_order(
    table: pa.Table, num_views: int, num_records: int, directory: Path
) -> np.ndarray:
    """The record order sorting by ``(row_index, view_index)``; ``ValueError`` unless every
    row has views ``0..num_views-1`` exactly once."""
    row_index = table.column(ROW_INDEX_COLUMN).to_numpy()
    view_index = table.column(VIEW_INDEX_COLUMN).to_numpy()
    order = np.lexsort((view_index, row_index))
    consistent = len(order) == num_records and len(order) % num_views == 0
    if consistent:
        rows = row_index[order].reshape(-1, num_views)
        views = view_index[order].reshape(-1, num_views)
        consistent = (
            bool(np.all(views == np.arange(num_views)))
            and bool(np.all(rows == rows[:, :1]))
            and bool(np.all(np.diff(rows[:, 0]) > 0))
        )
    if not consistent:
        raise ValueError(
            f"the teacher-logit cache at {directory} is inconsistent: every row must have views "
            f"0..{num_views - 1} exactly once; rebuild it"
        )
    return order


def _column_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A column as numpy; a fixed-size list column as ``[records, list_size]``."""
    array = column.combine_chunks()
    if isinstance(array.type, pa.FixedSizeListType):
        return array.flatten().to_numpy().reshape(len(array), array.type.list_size)
    return array.to_numpy()
