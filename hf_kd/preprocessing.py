"""How a model expects its pixels: resolution and normalisation."""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
