"""Image classification datasets from a name: the embedded digits, the Hub, local folders.

Whatever the source, :func:`load_image_dataset` returns splits in one layout, so the
transforms and the trainer never need to know where the data came from:

* splits ``train`` and ``validation``, plus ``test`` when the source has one;
* column ``image``: a ``datasets.Image(decode=False)`` feature (``{"bytes", "path"}``),
  decoded by the transforms, which can then name the row of a corrupt image;
* column ``label``: a ``ClassLabel`` shared by all splits;
* column ``row_index``: the row's index in its source split, for error messages.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Image,
    Value,
    load_dataset,
    load_from_disk,
)

from hf_kd.data.digits import load_digits_dataset

logger = logging.getLogger(__name__)

DIGITS = "digits"
IMAGEFOLDER = "imagefolder"
IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"
ROW_INDEX_COLUMN = "row_index"
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label")
VALIDATION_SPLIT_NAMES = ("validation", "valid", "val")
TEST_SPLIT = "test"


@dataclass(frozen=True)
class ImageClassificationData:
    """Splits in the standard layout (see the module docstring) and their class names."""

    splits: DatasetDict
    label_names: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: index for index, name in enumerate(self.label_names)}


def load_image_dataset(
    name_or_path: str = DIGITS,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    eval_split: str | None = None,
    validation_fraction: float = 0.1,
    seed: int = 42,
    data_dir: str | None = None,
) -> ImageClassificationData:
    """Load an image classification dataset and bring it to the standard layout.

    Args:
        name_or_path: ``"digits"`` (embedded, offline: see :mod:`hf_kd.data.digits`; a
            folder of that name must be given as ``"./digits"``); ``"imagefolder"`` with
            ``data_dir`` (a folder of class subfolders, optionally under split folders
            ``train/``, ``test/``...); a local folder (images in class subfolders, data files
            such as parquet, or a ``save_to_disk`` dataset); or a Hub dataset id.
        image_column: the image column; default: the first ``datasets.Image`` feature.
        label_column: the label column; default: the first ``ClassLabel`` feature, else the
            first of ``label``, ``labels``, ``fine_label``. Integer labels get names
            ``"0"``..``"n-1"``; string labels become classes in sorted order.
        train_split: the split to train on.
        eval_split: the split used as ``validation``; default: a split named
            ``validation``/``valid``/``val`` if the source has one, else ``validation_fraction``
            of ``train_split``, split off with ``seed`` (stratified by label when every class
            has at least two images).
        validation_fraction: the share of ``train_split`` held out when no split is named.
        seed: seed of that hold-out split.
        data_dir: ``data_dir`` of ``datasets.load_dataset`` (required for ``imagefolder``).

    Raises:
        ValueError: a missing split or column (naming the available ones), a column of the
            wrong type, or labels that differ between splits.
    """
    source = _load_source(name_or_path, data_dir)
    _require(train_split, list(source), "split", f"in {name_or_path!r}")
    train = source[train_split]
    image_column = image_column or _detect_image_column(train, train_split)
    label_column = label_column or _detect_label_column(train, train_split)

    chosen = _choose_splits(source, train_split, eval_split, image_column, label_column)
    splits = {
        target: _standard_columns(source[name], name, image_column, label_column)
        for target, name in chosen.items()
    }
    label_names = _unify_labels(splits, chosen)
    if "validation" not in splits:
        splits["train"], splits["validation"] = _hold_out(
            splits["train"], validation_fraction, seed
        )
    logger.info(
        "%s: %s, %d classes",
        name_or_path,
        ", ".join(f"{name} {len(split)}" for name, split in splits.items()),
        len(label_names),
    )
    ordered = {name: splits[name] for name in ("train", "validation", TEST_SPLIT) if name in splits}
    return ImageClassificationData(splits=DatasetDict(ordered), label_names=label_names)


def _choose_splits(
    source: DatasetDict,
    train_split: str,
    eval_split: str | None,
    image_column: str,
    label_column: str,
) -> dict[str, str]:
    """Standard split name -> source split name."""
    if eval_split is not None:
        _require(eval_split, list(source), "split", "in the dataset")
        if eval_split == train_split:
            raise ValueError(f"eval_split and train_split are both {train_split!r}")
    validation = eval_split or next(
        (name for name in VALIDATION_SPLIT_NAMES if name in source and name != train_split),
        None,
    )
    chosen = {"train": train_split}
    if validation is not None:
        chosen["validation"] = validation
    if TEST_SPLIT in source and TEST_SPLIT not in chosen.values():
        if _is_labelled(source[TEST_SPLIT], image_column, label_column):
            chosen[TEST_SPLIT] = TEST_SPLIT
        else:
            logger.warning("split 'test' is left out: it has no labels")
    return chosen


def _is_labelled(split: Dataset, image_column: str, label_column: str) -> bool:
    """Whether ``split`` has both columns and at least one label (ClassLabel uses -1 for none)."""
    if not {image_column, label_column} <= set(split.column_names):
        return False
    if not isinstance(split.features[label_column], ClassLabel):
        return True
    return any(label >= 0 for label in split[label_column])


def _load_source(name_or_path: str, data_dir: str | None) -> DatasetDict:
    if name_or_path == DIGITS:
        return load_digits_dataset()
    if name_or_path == IMAGEFOLDER:
        if data_dir is None:
            raise ValueError("'imagefolder' needs data_dir=<folder of class subfolders>")
        return load_dataset(IMAGEFOLDER, data_dir=data_dir)
    if _is_saved_to_disk(name_or_path):
        saved = load_from_disk(name_or_path)
        return saved if isinstance(saved, DatasetDict) else DatasetDict({"train": saved})
    return load_dataset(name_or_path, data_dir=data_dir)


def _is_saved_to_disk(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, marker)) for marker in ("dataset_dict.json", "state.json")
    )


def _require(name: str, available: list[str], kind: str, where: str) -> None:
    if name not in available:
        raise ValueError(f"no {kind} {name!r} {where}; available: {available}")


def _detect_image_column(split: Dataset, split_name: str) -> str:
    for column, feature in split.features.items():
        if isinstance(feature, Image):
            return column
    raise ValueError(
        f"no image column (a datasets.Image feature) in split {split_name!r}; columns: "
        f"{split.column_names}; name it with image_column=..."
    )


def _detect_label_column(split: Dataset, split_name: str) -> str:
    for column, feature in split.features.items():
        if isinstance(feature, ClassLabel):
            return column
    for column in LABEL_COLUMN_NAMES:
        if column in split.column_names:
            return column
    raise ValueError(
        f"no label column (a ClassLabel feature or one of {list(LABEL_COLUMN_NAMES)}) in split "
        f"{split_name!r}; columns: {split.column_names}; name it with label_column=..."
    )


def _standard_columns(
    split: Dataset, split_name: str, image_column: str, label_column: str
) -> Dataset:
    for column in (image_column, label_column):
        _require(column, split.column_names, "column", f"in split {split_name!r}")
    if not isinstance(split.features[image_column], Image):
        raise ValueError(
            f"column {image_column!r} of split {split_name!r} is {split.features[image_column]},"
            " not a datasets.Image feature; choose the image column with image_column=..."
        )
    split = split.select_columns([image_column, label_column])
    split = split.rename_columns(
        {
            old: new
            for old, new in ((image_column, IMAGE_COLUMN), (label_column, LABEL_COLUMN))
            if old != new
        }
    )
    split = split.cast_column(IMAGE_COLUMN, Image(decode=False))
    return split.add_column(ROW_INDEX_COLUMN, np.arange(len(split), dtype=np.int64))


def _unify_labels(splits: dict[str, Dataset], source_names: dict[str, str]) -> tuple[str, ...]:
    """Give every split the same ``ClassLabel``; return its names."""
    features = {name: split.features[LABEL_COLUMN] for name, split in splits.items()}
    if all(isinstance(feature, ClassLabel) for feature in features.values()):
        names = {name: tuple(feature.names) for name, feature in features.items()}
        if len(set(names.values())) > 1:
            raise ValueError(
                "the splits have different classes: "
                + "; ".join(f"{source_names[name]}: {list(n)}" for name, n in names.items())
            )
        return names["train"]
    label_names = _label_names_from_values(splits, source_names)
    class_label = ClassLabel(names=list(label_names))
    for name, split in splits.items():
        splits[name] = split.cast_column(LABEL_COLUMN, class_label)
    return label_names


def _label_names_from_values(
    splits: dict[str, Dataset], source_names: dict[str, str]
) -> tuple[str, ...]:
    dtypes = set()
    for name, split in splits.items():
        feature = split.features[LABEL_COLUMN]
        if not isinstance(feature, Value) or not (
            feature.dtype.startswith(("int", "uint")) or feature.dtype in ("string", "large_string")
        ):
            raise ValueError(
                f"label column of split {source_names[name]!r} is {feature}: expected a "
                "ClassLabel, integers or strings; choose it with label_column=..."
            )
        dtypes.add("string" if "string" in feature.dtype else "int")
    if len(dtypes) > 1:
        raise ValueError("some splits have integer labels and others string labels")
    values = [value for split in splits.values() for value in split[LABEL_COLUMN]]
    if dtypes == {"string"}:
        return tuple(sorted(set(values)))
    if min(values) < 0:
        raise ValueError(f"integer labels must be >= 0, found {min(values)}")
    return tuple(str(index) for index in range(max(values) + 1))


def _hold_out(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split ``fraction`` of ``train`` off as validation, stratified when every class allows it."""
    if not 0 < fraction < 1:
        raise ValueError(
            f"validation_fraction must be in (0, 1) when the dataset has no validation split, "
            f"got {fraction}"
        )
    counts = np.bincount(np.asarray(train[LABEL_COLUMN]))
    present = int(np.count_nonzero(counts))
    validation_size = math.ceil(fraction * len(train))
    stratify = (
        counts[counts > 0].min() >= 2
        and validation_size >= present
        and len(train) - validation_size >= present
    )
    if not stratify:
        logger.warning("too few images per class for a stratified split: splitting at random")
    parts = train.train_test_split(
        test_size=fraction, seed=seed, stratify_by_column=LABEL_COLUMN if stratify else None
    )
    return parts["train"], parts["test"]
