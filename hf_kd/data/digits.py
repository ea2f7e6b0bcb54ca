"""The embedded offline default dataset: scikit-learn's real 8x8 handwritten digits.

1,797 scans of handwritten digits (UCI "Optical Recognition of Handwritten Digits", E. Alpaydin
and C. Kaynak, 1998), 10 classes, shipped inside scikit-learn, so the default job runs with
no network. Each 8x8 image (ink level 0..16) is scaled to 0..255, upscaled to 32x32 with
bilinear interpolation (smooth strokes rather than 4x4 blocks, and a size that small ViTs
and CNNs patch evenly) and stored as RGB. The train/test split is fixed: stratified, 20%
test (360 images), ``random_state=0``.
"""

from __future__ import annotations

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
from PIL import Image as PILImage
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

DIGITS_IMAGE_SIZE = 32
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DIGITS_CLASS_NAMES = tuple(str(digit) for digit in range(10))
_MAX_INK = 16


def load_digits_dataset() -> DatasetDict:
    """The digits as a ``DatasetDict`` with ``train`` (1,437) and ``test`` (360) splits.

    Columns: ``image`` (``datasets.Image``, RGB 32x32) and ``label`` (``ClassLabel`` with
    names ``"0"``..``"9"``). Rows keep scikit-learn's order within each split.
    """
    digits = load_digits()
    row_ids = np.arange(len(digits.target))
    train_ids, test_ids = train_test_split(
        row_ids,
        test_size=DIGITS_TEST_FRACTION,
        stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    features = Features({"image": Image(), "label": ClassLabel(names=list(DIGITS_CLASS_NAMES))})
    return DatasetDict(
        {
            split: Dataset.from_dict(
                {
                    "image": [_digit_image(digits.images[row]) for row in sorted(ids)],
                    "label": [int(digits.target[row]) for row in sorted(ids)],
                },
                features=features,
            )
            for split, ids in (("train", train_ids), ("test", test_ids))
        }
    )


def _digit_image(ink: np.ndarray) -> PILImage.Image:
    gray = PILImage.fromarray(
        np.round(ink * (255 / _MAX_INK)).astype(np.uint8)
    )  # 2-D uint8: mode "L"
    size = (DIGITS_IMAGE_SIZE, DIGITS_IMAGE_SIZE)
    return gray.resize(size, PILImage.Resampling.BILINEAR).convert("RGB")
