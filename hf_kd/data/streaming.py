"""Streaming: train on a split too large to download first, each rank on its own examples.

:func:`load_streaming_split` opens a split as a ``datasets.IterableDataset`` (Hub id or
local folder/files, ``streaming=True``) in the standard layout: ``image`` (stored bytes,
decoded by the transforms), ``label`` (a ``ClassLabel``), and ``example_id`` when the source
has an id column (``id_column``). :func:`prepare_streaming_split` shuffles it with a seeded
buffer, gives this rank its share with ``datasets.distributed.split_dataset_by_node`` (whole
shards when their number divides by the world size, else every ``world_size``-th example),
and decodes and augments each example with the PIL transforms in the ``DataLoader``
(``--dataloader_num_workers``: ``datasets`` splits the rank's shards among workers).

:class:`StreamingImages` marks the result as already split:
:class:`hf_kd.trainer.DistillationTrainer` gives it a data loader that Accelerate does not
split again. No two ranks see the same example, and together they see the split once per
pass.

Semantics.

* Steps, not epochs: an iterable split has no length, so training needs ``max_steps``.
  A rank whose share runs out starts its next pass (``set_epoch`` reseeds the shuffle with
  ``seed + epoch``) while the others go on; every rank makes the same number of steps.
* Resume: the stream is deterministic for a given seed, rank and world size, so
  ``resume_from_checkpoint`` replays it and skips the batches already trained on (the
  Trainer's ``skip_first_batches``): training resumes on exactly the examples an
  uninterrupted run would have seen next, at the cost of reading the skipped ones again.
  Resume with the same world size, batch size and seed.
* Evaluation: not streamed. A validation split is small; load it map-style (the example
  streams its first ``max_eval_samples`` rows once into memory) and evaluate it as usual:
  each rank evaluates its share and the Trainer gathers the predictions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from datasets import ClassLabel, Dataset, IterableDataset, load_dataset
from datasets import Image as ImageFeature
from datasets.distributed import split_dataset_by_node

from hf_kd.data.loading import IMAGE_COLUMN, LABEL_COLUMN, ROW_INDEX_COLUMN
from hf_kd.data.pipeline import PreparedSplit
from hf_kd.data.transforms import (
    EXAMPLE_ID_COLUMN,
    Augmentation,
    BatchTransform,
    build_transforms,
    collate_image_batch,
)
from hf_kd.preprocessing import ImagePreprocessing

DEFAULT_SHUFFLE_BUFFER = 1000


def load_streaming_split(
    name_or_path: str,
    split: str = "train",
    *,
    image_column: str = IMAGE_COLUMN,
    label_column: str = LABEL_COLUMN,
    id_column: str | None = None,
    data_dir: str | None = None,
) -> IterableDataset:
    """Open ``split`` of a Hub dataset or local folder as a stream in the standard layout.

    Raises:
        ValueError: a missing column, or a label column that is not a ``ClassLabel`` (a
            stream cannot be read through to find its classes).
    """
    stream = load_dataset(name_or_path, split=split, streaming=True, data_dir=data_dir)
    features = stream.features or {}
    columns = [image_column, label_column, *([id_column] if id_column else [])]
    missing = [column for column in columns if column not in features]
    if missing:
        raise ValueError(
            f"no column(s) {missing} in the stream of {name_or_path!r} split {split!r}; "
            f"columns: {list(features)}"
        )
    if not isinstance(features[label_column], ClassLabel):
        raise ValueError(
            f"column {label_column!r} is {features[label_column]}, not a ClassLabel: a streamed "
            "split must name its classes in its features"
        )
    renames = {image_column: IMAGE_COLUMN, label_column: LABEL_COLUMN}
    if id_column:
        renames[id_column] = EXAMPLE_ID_COLUMN
    stream = stream.select_columns(columns).rename_columns(
        {old: new for old, new in renames.items() if old != new}
    )
    return stream.cast_column(IMAGE_COLUMN, ImageFeature(decode=False))


def label_names_of(stream: IterableDataset | Dataset) -> tuple[str, ...]:
    """The class names of a split in the standard layout."""
    return tuple(stream.features[LABEL_COLUMN].names)


class StreamingImages(torch.utils.data.IterableDataset):
    """One rank's share of a streamed split, each example decoded and augmented on reading.

    Already split across ranks: the trainer must not split it again (module docstring).
    """

    def __init__(self, stream: IterableDataset, transform: BatchTransform) -> None:
        self.stream = stream
        self.transform = transform

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for pass ``epoch`` (called by the Trainer through its data loader)."""
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for example in self.stream:
            transformed = self.transform({key: [value] for key, value in example.items()})
            item = {key: values[0] for key, values in transformed.items()}
            if EXAMPLE_ID_COLUMN in example:
                item[EXAMPLE_ID_COLUMN] = example[EXAMPLE_ID_COLUMN]
            yield item


def prepare_streaming_split(
    stream: IterableDataset,
    *,
    preprocessing: ImagePreprocessing,
    teacher_preprocessing: ImagePreprocessing | None = None,
    augment: Augmentation = "default",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
) -> PreparedSplit:
    """This rank's share of a training ``stream``, shuffled, transformed (module docstring).

    ``shuffle_buffer`` examples are shuffled at a time (0: stream order).
    """
    if shuffle_buffer > 0:
        stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
    stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    teacher = teacher_preprocessing if teacher_preprocessing != preprocessing else None
    transform = build_transforms(
        preprocessing, train=True, augment=augment, teacher_preprocessing=teacher
    )
    return PreparedSplit(StreamingImages(stream, transform), collate_image_batch, "streaming")


def materialise(stream: IterableDataset, limit: int | None) -> Dataset:
    """The first ``limit`` examples (all when ``None``) of a stream as a map-style split, with
    a ``row_index`` column: for evaluation sets, read once."""
    examples = list(stream if limit is None else stream.take(limit))
    split = Dataset.from_list(examples, features=stream.features)
    return split.add_column(ROW_INDEX_COLUMN, list(range(len(split))))
