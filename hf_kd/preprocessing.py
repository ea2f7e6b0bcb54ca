"""How a model expects its pixels: resolution, normalisation and resampling filter."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ANTIALIASED_INTERPOLATIONS = ("bilinear", "bicubic")
TENSOR_INTERPOLATIONS = (*ANTIALIASED_INTERPOLATIONS, "nearest")


@dataclass(frozen=True)
class ImagePreprocessing:
    """The input a model expects: ``pixel = (rgb_in_0_1 - mean) / std`` at ``image_size``.

    ``image_size`` is ``(height, width)``; ``interpolation`` is a torchvision/timm name
    (``"bilinear"``, ``"bicubic"``, ...).
    """

    image_size: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ValueError(f"image_size must be (height, width) > 0, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std must have 3 entries (RGB)")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {self.std}")


# torchvision/timm interpolation names -> the PIL filters that PIL resizing and transformers
# image processors (their ``resample``) use
PIL_RESAMPLING: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def pil_resampling(interpolation: str) -> Image.Resampling:
    """The PIL filter of a torchvision/timm interpolation name (``"bicubic"`` -> ``BICUBIC``).

    Raises:
        ValueError: a name PIL has no filter for (``"area"``, ...).
    """
    if interpolation not in PIL_RESAMPLING:
        raise ValueError(
            f"interpolation {interpolation!r} has no PIL resampling filter; use one of "
            f"{sorted(PIL_RESAMPLING)}"
        )
    return PIL_RESAMPLING[interpolation]


def resize_rgb(rgb: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """Resize float RGB in ``[0, 1]``, ``[B, 3, H, W]``, to ``size`` on its device.

    Antialiased, like PIL, when bilinear or bicubic; bicubic overshoot is clamped back to
    ``[0, 1]``. A batch already at ``size`` is returned as is, whatever ``interpolation``.

    Raises:
        ValueError: a resize with an interpolation other than :data:`TENSOR_INTERPOLATIONS`.
    """
    if tuple(rgb.shape[-2:]) == tuple(size):
        return rgb
    if interpolation not in TENSOR_INTERPOLATIONS:
        raise ValueError(
            f"interpolation {interpolation!r} is not supported on the device; choose one of "
            f"{TENSOR_INTERPOLATIONS}"
        )
    antialiased = interpolation in ANTIALIASED_INTERPOLATIONS
    resized = F.interpolate(
        rgb,
        size=tuple(size),
        mode=interpolation,
        antialias=antialiased,
        align_corners=False if antialiased else None,
    )
    return resized.clamp(0.0, 1.0) if interpolation == "bicubic" else resized


@functools.lru_cache(maxsize=64)
def channel_tensor(
    values: tuple[float, ...], device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Per-channel ``values`` (a mean or std) as a ``[1, C, 1, 1]`` tensor on ``device``,
    made once per (values, device, dtype): a training step reuses it instead of copying it
    from the host again. Read-only: callers must not modify it in place."""
    return torch.tensor(values, device=device, dtype=dtype).view(1, len(values), 1, 1)
