"""Augmented views of decoded uint8 images, built per batch on the training device.

The decode-once path (:mod:`hf_kd.data.decoded`) keeps every image as its *canonical view*,
uint8 ``[3, H, W]`` (the view :func:`hf_kd.data.build_transforms` builds with PIL before it
augments). A batch carries those views as ``images`` ``[B, 3, H, W]`` and, when training,
their augmentation as ``view_params`` ``[B, 3]`` int64 ``(left, top, flip)``, drawn on the
host with the same distributions as the PIL path (:func:`hf_kd.data.transforms.draw_augmentation`:
a shift uniform in ``[-H/8, H/8] x [-W/8, W/8]`` with zero padding, and a horizontal flip with
probability 1/2 for ``augment="default"``) or replayed from a :class:`~hf_kd.data.ViewReplay`.
:class:`DeviceViews` then, on the device: shifts and flips by indexing (exactly the pixels
of PIL's ``crop`` and ``transpose``), scales to ``[0, 1]``, resizes to each model's size
when it differs (:func:`hf_kd.preprocessing.resize_rgb`) and normalises,
``pixel = (x - mean) / std``; the teacher's input is made from the same augmented view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hf_kd.data.transforms import (
    AUGMENTATIONS,
    ViewReplay,
    draw_augmentation,
    shift_padding,
)
from hf_kd.preprocessing import ImagePreprocessing, channel_tensor, resize_rgb

IMAGES_COLUMN = "images"
VIEW_PARAMS_COLUMN = "view_params"


def random_view_params(
    count: int,
    view_size: tuple[int, int],
    augment: str,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fresh augmentations of ``count`` views of ``(height, width)``: ``[count, 3]`` int64
    ``(left, top, flip)``, from ``generator`` (default: the global torch generator)."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    params = torch.zeros(count, 3, dtype=torch.int64)
    if augment == "none":
        return params
    pad_y, pad_x = shift_padding(view_size)
    params[:, 0] = torch.randint(2 * pad_x + 1, (count,), generator=generator) - pad_x
    params[:, 1] = torch.randint(2 * pad_y + 1, (count,), generator=generator) - pad_y
    if augment == "default":
        params[:, 2] = torch.randint(2, (count,), generator=generator)
    return params


def replayed_view_params(
    views: ViewReplay,
    augment: str,
    row_indices: Sequence[int] | np.ndarray,
    view_indices: Sequence[int] | np.ndarray,
) -> Tensor:
    """The augmentation of view ``k`` of row ``r`` for each pair, ``[B, 3]`` int64: the same
    draws as the PIL path's replayed views (:meth:`ViewReplay.randint`)."""
    drawn = [
        draw_augmentation(views.view_size, augment, views.randint(row, view))
        for row, view in zip(row_indices, view_indices, strict=True)
    ]
    return torch.tensor(
        [[view.left, view.top, int(view.flip)] for view in drawn], dtype=torch.int64
    ).reshape(len(drawn), 3)


def apply_view_params(images: Tensor, view_params: Tensor) -> Tensor:
    """Shift each image by ``(left, top)`` with zero fill, then flip it when ``flip``.

    Output pixel ``(y, x)`` of image ``b`` is ``images[b, :, top + y, left + x']`` (zero
    outside the image), with ``x' = W - 1 - x`` when flipped, else ``x``: what PIL's
    ``crop((left, top, left + W, top + H))`` and ``FLIP_LEFT_RIGHT`` give. Shifts must lie
    within :func:`~hf_kd.data.transforms.shift_padding` of the image (as drawn); they are
    not read back from the device.
    """
    if images.ndim != 4 or view_params.shape != (images.shape[0], 3):
        raise ValueError(
            f"images must be [B, C, H, W] and view_params [B, 3], got {tuple(images.shape)} "
            f"and {tuple(view_params.shape)}"
        )
    count, channels, height, width = images.shape
    # shifts are at most shift_padding of the view: a static pad, no read of the parameters
    pad_y, pad_x = shift_padding((height, width))
    params = view_params.to(images.device, non_blocking=True)
    padded = torch.nn.functional.pad(images, (pad_x, pad_x, pad_y, pad_y))
    # two gathers with broadcast indices (rows, then columns with the flip folded in): a
    # fraction of the cost of one advanced-indexing gather over [B, H, W]
    rows = torch.arange(height, device=images.device) + params[:, 1:2] + pad_y
    rows = rows[:, None, :, None].expand(count, channels, height, padded.shape[-1])
    columns = torch.arange(width, device=images.device).expand(count, width)
    columns = torch.where(params[:, 2:3].bool(), width - 1 - columns, columns)
    columns = (columns + params[:, 0:1] + pad_x)[:, None, None, :]
    shifted = torch.gather(padded, 2, rows)
    return torch.gather(shifted, 3, columns.expand(count, channels, height, width))


def model_input(images: Tensor, preprocessing: ImagePreprocessing) -> Tensor:
    """Float32 ``(x / 255 - mean) / std`` at ``preprocessing.image_size`` from uint8 views."""
    mean = channel_tensor(tuple(preprocessing.mean), images.device)
    std = channel_tensor(tuple(preprocessing.std), images.device)
    if tuple(images.shape[-2:]) == tuple(preprocessing.image_size):
        # one fused pass: x * (1 / (255 std)) - mean / std
        return torch.addcmul(-mean / std, images.float(), 1 / (255 * std))
    rgb = resize_rgb(images.float() / 255, preprocessing.image_size, preprocessing.interpolation)
    return (rgb - mean) / std


class DeviceViews:
    """Turns a batch of uint8 views into model inputs on the batch's device.

    ``images`` and ``view_params`` are replaced by ``pixel_values`` (the ``student``'s
    preprocessing) and, with ``with_teacher``, ``teacher_pixel_values`` when the ``teacher``'s
    preprocessing differs: both from the same augmented view. Every other key passes through.
    """

    def __init__(
        self, student: ImagePreprocessing, teacher: ImagePreprocessing | None = None
    ) -> None:
        self.student = student
        self.teacher = teacher if teacher is not None and teacher != student else None

    def __call__(self, batch: Mapping[str, Any], *, with_teacher: bool = True) -> dict[str, Any]:
        built = {
            key: value
            for key, value in batch.items()
            if key not in (IMAGES_COLUMN, VIEW_PARAMS_COLUMN)
        }
        views = batch[IMAGES_COLUMN]
        if batch.get(VIEW_PARAMS_COLUMN) is not None:
            views = apply_view_params(views, batch[VIEW_PARAMS_COLUMN])
        built["pixel_values"] = model_input(views, self.student)
        if with_teacher and self.teacher is not None:
            built["teacher_pixel_values"] = model_input(views, self.teacher)
        return built
