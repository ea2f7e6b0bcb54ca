"""From stored images to normalised model inputs: decoding, RGB, augmentation, batching.

The pipeline of one example, for ``Dataset.with_transform(build_transforms(...))``:

1. decode the stored image (a corrupt file raises ``ValueError`` naming column and row) and
   convert it to RGB: transparency is composited on white (as transformers' image
   processors do), palette, grayscale, 16-bit grayscale and CMYK images are converted;
2. *canonical view*: resize the shorter side to ``max(height, width)`` and centre-crop
   ``(height, width)``, where ``(height, width)`` is the largest input size among the models
   fed (the student and, optionally, the teacher);
3. training only, light augmentation of that view, sized for small images (the CIFAR recipe,
   He et al., "Deep Residual Learning for Image Recognition", 2016): zero-pad 1/8 of each side
   and randomly crop back to size (a random shift), then a horizontal flip with probability
   1/2 (``augment="default"``), no flip (``"crop"``: digits, text, anything a mirror
   changes), or nothing (``"none"``);
4. per model: resize the view to the model's size when it differs, scale to ``[0, 1]`` and
   normalise, ``pixel = (x - mean) / std``.

Student and teacher inputs come from the same augmented view, so the teacher sees the crop
and flip the student sees.

*Replayed views* (:class:`ViewReplay`, for cached teacher logits): the canonical view is built
at a fixed size and the augmentation of view ``k`` of row ``r`` is drawn from a generator
seeded with ``(seed, r, k)`` instead of the global one, so view ``k`` of a row has the same
pixels in every epoch, for the student now as for the teacher when its logits were cached.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, get_args

import numpy as np
import torch
from PIL import Image

from hf_kd.data.loading import IMAGE_COLUMN, LABEL_COLUMN, ROW_INDEX_COLUMN
from hf_kd.preprocessing import ImagePreprocessing, pil_resampling

Augmentation = Literal["default", "crop", "none"]
AUGMENTATIONS: tuple[str, ...] = get_args(Augmentation)
PADDING_FRACTION = 1 / 8
TEACHER_LOGITS_COLUMN = "teacher_logits"
VIEW_INDEX_COLUMN = "view_index"
EXAMPLE_ID_COLUMN = "example_id"
STACKED_KEYS = ("pixel_values", "teacher_pixel_values", TEACHER_LOGITS_COLUMN)
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")

BatchTransform = Callable[[Mapping[str, Sequence[Any]]], dict[str, list[Any]]]
RandomInteger = Callable[[int], int]  # n -> a uniform draw from {0, ..., n - 1}


@dataclass(frozen=True)
class ViewReplay:
    """A fixed set of ``num_views`` augmented views per row, the same pixels every time.

    The canonical view is built at ``view_size`` (height, width) with ``interpolation``,
    whatever the sizes of the models fed; view ``k`` of the row with ``row_index`` ``r`` is
    augmented with parameters drawn from ``numpy.random.default_rng((seed, r, k))``. Any
    transform built with the same ``ViewReplay`` and ``augment`` gives view ``k`` of row ``r``
    the same pixels (up to each model's own resize and normalisation).
    """

    view_size: tuple[int, int]
    interpolation: str
    num_views: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.view_size) != 2 or min(self.view_size) <= 0:
            raise ValueError(f"view_size must be (height, width) > 0, got {self.view_size}")
        if self.num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {self.num_views}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        pil_resampling(self.interpolation)

    def randint(self, row_index: int, view_index: int) -> RandomInteger:
        """The source of the augmentation draws of view ``view_index`` of row ``row_index``.

        Raises:
            ValueError: ``view_index`` outside ``[0, num_views)``.
        """
        if not 0 <= int(view_index) < self.num_views:
            raise ValueError(
                f"view_index {int(view_index)} of row {int(row_index)} is outside "
                f"[0, {self.num_views})"
            )
        generator = np.random.default_rng((self.seed, int(row_index), int(view_index)))
        return partial(_numpy_randint, generator)


@dataclass(frozen=True)
class ViewAugmentation:
    """A random shift (the crop's top-left corner, in pixels) and an optional horizontal flip."""

    left: int
    top: int
    flip: bool


def build_transforms(
    preprocessing: ImagePreprocessing,
    *,
    train: bool,
    augment: Augmentation = "default",
    teacher_preprocessing: ImagePreprocessing | None = None,
    image_column: str = IMAGE_COLUMN,
    label_column: str = LABEL_COLUMN,
    views: ViewReplay | None = None,
) -> BatchTransform:
    """A batch transform for ``Dataset.with_transform`` (pipeline in the module docstring).

    It maps a batch ``{image_column: [...], label_column: [...]}`` to ``{"pixel_values":
    [float32 tensor [3, H, W], ...], "labels": [int, ...]}``, plus ``"teacher_pixel_values"``
    (at the teacher's size and normalisation) when ``teacher_preprocessing`` is given, and
    ``"teacher_logits"`` (float32 tensors) when the batch has cached ones.
    Images may be PIL images or ``{"bytes", "path"}`` dicts (``datasets.Image(decode=False)``);
    a ``row_index`` column, as :func:`hf_kd.data.load_image_dataset` adds, names the row of
    a corrupt image. ``augment`` only matters when ``train`` is true.

    With ``views``, the canonical view has ``views.view_size`` and ``views.interpolation``,
    and the augmentation is replayed (module docstring): the batch must then carry
    ``row_index`` and ``view_index`` (``0 <= view_index < views.num_views``) when it augments.

    Raises:
        ValueError: a batch carrying cached ``teacher_logits`` while this transform augments
            at random (``train`` and ``augment != "none"`` without ``views``): the teacher's
            logits belong to other pixels than the student would see.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    outputs = {"pixel_values": preprocessing}
    if teacher_preprocessing is not None:
        outputs["teacher_pixel_values"] = teacher_preprocessing
    for target in outputs.values():
        pil_resampling(target.interpolation)  # an unknown interpolation fails here, not mid-epoch
    if views is None:
        canonical_size = (
            max(target.image_size[0] for target in outputs.values()),
            max(target.image_size[1] for target in outputs.values()),
        )
        canonical_interpolation = preprocessing.interpolation
    else:
        canonical_size, canonical_interpolation = views.view_size, views.interpolation
    augmentation = augment if train else "none"

    def transform(batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        if image_column not in batch:
            raise ValueError(
                f"no column {image_column!r} in the batch; columns: {list(batch)}; "
                "pass image_column=..."
            )
        if TEACHER_LOGITS_COLUMN in batch and augmentation != "none" and views is None:
            raise ValueError(
                f"the batch carries cached {TEACHER_LOGITS_COLUMN!r} but this transform augments "
                f"at random (augment={augment!r}): the teacher saw other pixels than the "
                "student would. Train with augment='none', or cache replayed views "
                "(cache_teacher_logits(..., augment=..., num_views=K)) and attach them with "
                "hf_kd.with_cached_teacher_logits"
            )
        row_indices = batch.get(ROW_INDEX_COLUMN)
        draws = _augmentation_draws(batch, views, augmentation, len(batch[image_column]))
        transformed: dict[str, list[Any]] = {key: [] for key in outputs}
        for position, stored in enumerate(batch[image_column]):
            row = (
                f"row {row_indices[position]}"
                if row_indices is not None
                else f"batch item {position}"
            )
            image = load_rgb_image(stored, where=f"column {image_column!r}, {row}")
            view = resize_and_crop(image, canonical_size, canonical_interpolation)
            if augmentation != "none":
                view = _apply_augmentation(
                    view,
                    draw_augmentation((view.height, view.width), augmentation, draws[position]),
                )
            for key, target in outputs.items():
                transformed[key].append(_to_normalised_tensor(view, target))
        if label_column in batch:
            transformed["labels"] = [int(label) for label in batch[label_column]]
        if TEACHER_LOGITS_COLUMN in batch:  # cached teacher outputs pass through
            transformed[TEACHER_LOGITS_COLUMN] = [
                torch.as_tensor(logits, dtype=torch.float32)
                for logits in batch[TEACHER_LOGITS_COLUMN]
            ]
        return transformed

    return transform


def collate_image_batch(examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack transformed examples into a batch: ``pixel_values`` (and ``teacher_pixel_values``,
    ``teacher_logits`` when present) stacked, ``labels`` (and a streamed split's
    ``example_id``) as int64."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    batch: dict[str, torch.Tensor] = {}
    for key in (*STACKED_KEYS, "labels", EXAMPLE_ID_COLUMN):
        present = sum(key in example for example in examples)
        if present == 0:
            continue
        if present != len(examples):
            raise ValueError(f"{key!r} is in {present} of {len(examples)} examples of the batch")
        if key in ("labels", EXAMPLE_ID_COLUMN):
            integers = [int(example[key]) for example in examples]
            batch[key] = torch.tensor(integers, dtype=torch.int64)
        else:
            batch[key] = torch.stack([torch.as_tensor(example[key]) for example in examples])
    return batch


def load_rgb_image(stored: Image.Image | Mapping[str, Any], *, where: str = "image") -> Image.Image:
    """Decode a stored image and convert it to RGB; ``ValueError`` naming ``where`` if corrupt.

    ``stored`` is a PIL image or a ``datasets.Image(decode=False)`` value ``{"bytes",
    "path"}``. Transparency is composited on white.
    """
    try:
        if isinstance(stored, Image.Image):
            image = stored
        elif isinstance(stored, Mapping) and stored.get("bytes") is not None:
            image = Image.open(io.BytesIO(stored["bytes"]))
        elif isinstance(stored, Mapping) and stored.get("path") is not None:
            image = Image.open(stored["path"])
        else:
            raise ValueError(
                f"expected a PIL image or an image {{'bytes', 'path'}}, got {stored!r}"
            )
        image.load()
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        path = stored.get("path") if isinstance(stored, Mapping) else None
        raise ValueError(
            f"cannot decode the image in {where}{f' ({path})' if path else ''}: {error}. "
            "Remove or replace this image."
        ) from error
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        sixteen_bit = np.asarray(image, dtype=np.int64).clip(0, 65535)
        return Image.fromarray((sixteen_bit // 257).astype(np.uint8)).convert("RGB")
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def resize_and_crop(image: Image.Image, size: tuple[int, int], interpolation: str) -> Image.Image:
    """Resize the shorter side to ``max(size)`` (aspect kept), centre-crop to ``size``."""
    height, width = size
    shorter_side = max(height, width)
    scale = shorter_side / min(image.width, image.height)
    resized_size = (
        max(width, round(image.width * scale)),
        max(height, round(image.height * scale)),
    )
    if resized_size != image.size:
        image = image.resize(resized_size, pil_resampling(interpolation))
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def _augmentation_draws(
    batch: Mapping[str, Sequence[Any]], views: ViewReplay | None, augmentation: str, size: int
) -> list[RandomInteger]:
    """One source of random integers per batch item: the global torch generator, or, for
    replayed views, a generator seeded with ``(seed, row_index, view_index)``."""
    if augmentation == "none" or views is None:
        return [_torch_randint] * size
    missing = [key for key in (ROW_INDEX_COLUMN, VIEW_INDEX_COLUMN) if key not in batch]
    if missing:
        raise ValueError(
            f"replayed views need the columns {missing} in the batch; columns: {list(batch)}"
        )
    return [
        views.randint(row_index, view_index)
        for row_index, view_index in zip(
            batch[ROW_INDEX_COLUMN], batch[VIEW_INDEX_COLUMN], strict=True
        )
    ]


def _torch_randint(n: int) -> int:
    return int(torch.randint(n, ()).item())


def _numpy_randint(generator: np.random.Generator, n: int) -> int:
    return int(generator.integers(n))


def shift_padding(view_size: tuple[int, int]) -> tuple[int, int]:
    """The largest shift ``(pad_y, pad_x)`` of a ``(height, width)`` view: 1/8 of each side."""
    height, width = view_size
    return round(height * PADDING_FRACTION), round(width * PADDING_FRACTION)


def draw_augmentation(
    view_size: tuple[int, int], augmentation: str, randint: RandomInteger
) -> ViewAugmentation:
    """The augmentation of one ``(height, width)`` view: a shift uniform in
    ``[-pad, pad]`` along each axis (:func:`shift_padding`), drawn x first, and, for
    ``"default"``, a flip with probability 1/2; nothing for ``"none"``."""
    if augmentation == "none":
        return ViewAugmentation(left=0, top=0, flip=False)
    pad_y, pad_x = shift_padding(view_size)
    left = randint(2 * pad_x + 1) - pad_x
    top = randint(2 * pad_y + 1) - pad_y
    flip = augmentation == "default" and randint(2) == 1
    return ViewAugmentation(left=left, top=top, flip=flip)


def _apply_augmentation(view: Image.Image, augmentation: ViewAugmentation) -> Image.Image:
    left, top = augmentation.left, augmentation.top
    # crop() beyond the border fills with zeros: a zero-padded random shift
    view = view.crop((left, top, left + view.width, top + view.height))
    if augmentation.flip:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return view


def _to_normalised_tensor(view: Image.Image, target: ImagePreprocessing) -> torch.Tensor:
    height, width = target.image_size
    if view.size != (width, height):
        view = view.resize((width, height), pil_resampling(target.interpolation))
    pixels = torch.from_numpy(np.asarray(view, dtype=np.float32).copy()).permute(2, 0, 1) / 255
    mean = torch.tensor(target.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(target.std, dtype=torch.float32).view(3, 1, 1)
    return (pixels - mean) / std
