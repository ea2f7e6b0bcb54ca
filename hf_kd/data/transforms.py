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
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch
from PIL import Image

from hf_kd.data.loading import IMAGE_COLUMN, LABEL_COLUMN, ROW_INDEX_COLUMN
from hf_kd.preprocessing import ImagePreprocessing

Augmentation = Literal["default", "crop", "none"]
AUGMENTATIONS: tuple[str, ...] = get_args(Augmentation)
PADDING_FRACTION = 1 / 8
TEACHER_LOGITS_COLUMN = "teacher_logits"
STACKED_KEYS = ("pixel_values", "teacher_pixel_values", TEACHER_LOGITS_COLUMN)
_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

BatchTransform = Callable[[Mapping[str, Sequence[Any]]], dict[str, list[Any]]]


def build_transforms(
    preprocessing: ImagePreprocessing,
    *,
    train: bool,
    augment: Augmentation = "default",
    teacher_preprocessing: ImagePreprocessing | None = None,
    image_column: str = IMAGE_COLUMN,
    label_column: str = LABEL_COLUMN,
) -> BatchTransform:
    """A batch transform for ``Dataset.with_transform`` (pipeline in the module docstring).

    It maps a batch ``{image_column: [...], label_column: [...]}`` to ``{"pixel_values":
    [float32 tensor [3, H, W], ...], "labels": [int, ...]}``, plus ``"teacher_pixel_values"``
    (at the teacher's size and normalisation) when ``teacher_preprocessing`` is given, and
    ``"teacher_logits"`` (float32 tensors) when the batch has cached ones.
    Images may be PIL images or ``{"bytes", "path"}`` dicts (``datasets.Image(decode=False)``);
    a ``row_index`` column, as :func:`hf_kd.data.load_image_dataset` adds, names the row of
    a corrupt image. ``augment`` only matters when ``train`` is true.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    outputs = {"pixel_values": preprocessing}
    if teacher_preprocessing is not None:
        outputs["teacher_pixel_values"] = teacher_preprocessing
    canonical_size = (
        max(target.image_size[0] for target in outputs.values()),
        max(target.image_size[1] for target in outputs.values()),
    )
    for target in outputs.values():
        _resample(target.interpolation)  # an unsupported interpolation fails here, not mid-epoch
    augmentation = augment if train else "none"

    def transform(batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        if image_column not in batch:
            raise ValueError(
                f"no column {image_column!r} in the batch; columns: {list(batch)}; "
                "pass image_column=..."
            )
        row_indices = batch.get(ROW_INDEX_COLUMN)
        transformed: dict[str, list[Any]] = {key: [] for key in outputs}
        for position, stored in enumerate(batch[image_column]):
            row = (
                f"row {row_indices[position]}"
                if row_indices is not None
                else f"batch item {position}"
            )
            image = load_rgb_image(stored, where=f"column {image_column!r}, {row}")
            view = _augment(_resize_and_crop(image, canonical_size, preprocessing), augmentation)
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
    ``teacher_logits`` when present) stacked, ``labels`` as int64."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    batch: dict[str, torch.Tensor] = {}
    for key in (*STACKED_KEYS, "labels"):
        present = sum(key in example for example in examples)
        if present == 0:
            continue
        if present != len(examples):
            raise ValueError(f"{key!r} is in {present} of {len(examples)} examples of the batch")
        if key == "labels":
            labels = [int(example[key]) for example in examples]
            batch[key] = torch.tensor(labels, dtype=torch.int64)
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


def _resize_and_crop(
    image: Image.Image, size: tuple[int, int], preprocessing: ImagePreprocessing
) -> Image.Image:
    """Resize the shorter side to ``max(size)`` (aspect kept), centre-crop to ``size``."""
    height, width = size
    shorter_side = max(height, width)
    scale = shorter_side / min(image.width, image.height)
    resized_size = (
        max(width, round(image.width * scale)),
        max(height, round(image.height * scale)),
    )
    if resized_size != image.size:
        image = image.resize(resized_size, _resample(preprocessing.interpolation))
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def _augment(view: Image.Image, augmentation: str) -> Image.Image:
    if augmentation == "none":
        return view
    pad_x = round(view.width * PADDING_FRACTION)
    pad_y = round(view.height * PADDING_FRACTION)
    left = int(torch.randint(0, 2 * pad_x + 1, ()).item()) - pad_x
    top = int(torch.randint(0, 2 * pad_y + 1, ()).item()) - pad_y
    # crop() beyond the border fills with zeros: a zero-padded random shift
    view = view.crop((left, top, left + view.width, top + view.height))
    if augmentation == "default" and bool(torch.rand(()) < 0.5):
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return view


def _to_normalised_tensor(view: Image.Image, target: ImagePreprocessing) -> torch.Tensor:
    height, width = target.image_size
    if view.size != (width, height):
        view = view.resize((width, height), _resample(target.interpolation))
    pixels = torch.from_numpy(np.asarray(view, dtype=np.float32).copy()).permute(2, 0, 1) / 255
    mean = torch.tensor(target.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(target.std, dtype=torch.float32).view(3, 1, 1)
    return (pixels - mean) / std


def _resample(interpolation: str) -> Image.Resampling:
    if interpolation not in _PIL_RESAMPLE:
        raise ValueError(
            f"interpolation {interpolation!r} is not supported; use one of {sorted(_PIL_RESAMPLE)}"
        )
    return _PIL_RESAMPLE[interpolation]
