"""The benchmark's data: CIFAR-100's train and test splits decoded once by the library
(:func:`hf_kd.data.decode_split`) at the tier's size, the models' preprocessing, and the
test-set accuracy of a model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from torch import Tensor
from transformers import PreTrainedModel

from benchmarks.cifar100.config import DOWNSAMPLING, TierConfig
from hf_kd.data import DecodedSplit, DeviceViews, decode_split, load_image_dataset
from hf_kd.data.device_views import IMAGES_COLUMN
from hf_kd.models_cifar import CIFAR100_MEAN, CIFAR100_STD
from hf_kd.preprocessing import ImagePreprocessing


@dataclass
class TensorData:
    """The train and test splits decoded once to uint8 ``[N, 3, H, W]`` at the tier's size
    (:func:`hf_kd.data.decode_split`), with the training split itself (the teacher-logit
    cache's identity) and the class names."""

    train: DecodedSplit
    test: DecodedSplit
    train_split: Dataset
    label_names: tuple[str, ...]
    cache_dir: Path

    @property
    def train_images(self) -> Tensor:
        return self.train.images

    @property
    def train_labels(self) -> Tensor:
        return self.train.labels

    @property
    def test_images(self) -> Tensor:
        return self.test.images

    @property
    def test_labels(self) -> Tensor:
        return self.test.labels


def preprocessing_of(tier: TierConfig) -> ImagePreprocessing:
    """The models' input: the tier's size, CIFAR-100 normalisation, images box-downsampled
    to it (a 2x2 box filter from 32x32 to 16x16)."""
    return ImagePreprocessing(
        image_size=(tier.image_size, tier.image_size),
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        interpolation=DOWNSAMPLING,
    )


def load_tensor_data(
    dataset_name: str, image_size: int, cache_dir: Path, limit: int | None = None
) -> TensorData:
    """Decode the train and test splits once (the first ``limit`` rows of each, if given),
    box-downsampled to ``image_size``; cached as uint8 in ``cache_dir`` by the library."""
    data = load_image_dataset(dataset_name, eval_split="test")
    splits = {
        name: data.splits[name] if limit is None else data.splits[name].select(range(limit))
        for name in ("train", "validation")
    }
    size = (image_size, image_size)
    return TensorData(
        train=decode_split(splits["train"], size, DOWNSAMPLING, cache_dir=cache_dir),
        test=decode_split(splits["validation"], size, DOWNSAMPLING, cache_dir=cache_dir),
        train_split=splits["train"],
        label_names=data.label_names,
        cache_dir=cache_dir,
    )


def model_inputs(images: Tensor, tier: TierConfig) -> Tensor:
    """Normalised model inputs of uint8 views, without augmentation."""
    return DeviceViews(preprocessing_of(tier))({IMAGES_COLUMN: images})["pixel_values"]


@torch.no_grad()
def test_accuracy(
    model: PreTrainedModel, data: TensorData, tier: TierConfig, batch_size: int = 1000
) -> float:
    """Top-1 accuracy (%) on the full test set, centre view (no augmentation)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(data.test_labels), batch_size):
        images = model_inputs(data.test_images[start : start + batch_size].to(device), tier)
        logits = model(pixel_values=images).logits
        labels = data.test_labels[start : start + batch_size].to(device)
        correct += int((logits.argmax(dim=1) == labels).sum())
    return 100.0 * correct / len(data.test_labels)
