"""Tiny models, a learnable in-memory image task and economical arguments for trainer tests."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_kd.arguments import DistillationArguments
from hf_kd.models import load_classifier
from hf_kd.trainer import DistillationTrainer

NUM_CLASSES = 5
IMAGE_SIZE = 16


def class_names(num_classes: int = NUM_CLASSES) -> dict[int, str]:
    return {index: f"shape_{index}" for index in range(num_classes)}


# the encoder of the tiny transformers students: 2 layers of width 32, 4x4 patches
TINY_TRANSFORMER = {
    "patch_size": 4,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
TINY_TIMM_DEIT_KWARGS = {
    "img_size": IMAGE_SIZE,
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
}


def label_config(num_labels: int, id2label: dict[int, str] | None = None) -> dict[str, Any]:
    """``num_labels``, ``id2label`` and ``label2id`` for a config (default class names)."""
    id2label = id2label if id2label is not None else class_names(num_labels)
    return {
        "num_labels": num_labels,
        "id2label": id2label,
        "label2id": {name: index for index, name in id2label.items()},
    }


def tiny_vit(
    num_labels: int = NUM_CLASSES,
    image_size: int = IMAGE_SIZE,
    seed: int = 0,
    id2label: dict[int, str] | None = None,
) -> ViTForImageClassification:
    """A 2-layer ViT with hidden size 32: about 30k parameters."""
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size, **TINY_TRANSFORMER, **label_config(num_labels, id2label)
    )
    return ViTForImageClassification(config)


def tiny_timm(
    architecture: str = "test_efficientnet_gn", num_labels: int = NUM_CLASSES, seed: int = 0
) -> TimmWrapperForImageClassification:
    """A timm student behind transformers' wrapper (GroupNorm: no batch statistics)."""
    torch.manual_seed(seed)
    config = TimmWrapperConfig(architecture=architecture, **label_config(num_labels))
    return TimmWrapperForImageClassification(config)


def tiny_timm_deit(
    num_labels: int = NUM_CLASSES, seed: int = 0
) -> TimmWrapperForImageClassification:
    """timm's DeiT with a distillation token (``VisionTransformerDistilled``), 16x16 input,
    width 32, 2 blocks, built the way hf-kd builds timm students."""
    torch.manual_seed(seed)
    return load_classifier(
        "deit_tiny_distilled_patch16_224",
        id2label=class_names(num_labels),
        pretrained=False,
        model_kwargs=TINY_TIMM_DEIT_KWARGS,
    )


def tiny_deit(
    num_labels: int = NUM_CLASSES, seed: int = 0
) -> DeiTForImageClassificationWithTeacher:
    """transformers' DeiT with a distillation token, 16x16 input, width 32, 2 layers."""
    torch.manual_seed(seed)
    config = DeiTConfig(image_size=IMAGE_SIZE, **TINY_TRANSFORMER, **label_config(num_labels))
    return DeiTForImageClassificationWithTeacher(config)


def sharpened(model: ViTForImageClassification, factor: float) -> ViTForImageClassification:
    """Scale a ViT's classifier so that its softmax is far from uniform (a confident teacher)."""
    with torch.no_grad():
        model.classifier.weight.mul_(factor)
        model.classifier.bias.mul_(factor)
    return model


class PatternDataset(torch.utils.data.Dataset):
    """Each class is a fixed random image; samples are that image plus Gaussian noise.

    Learnable in a few steps. Items are dicts with ``pixel_values`` ``[3, H, W]`` and
    ``labels`` (int64), plus any extra per-sample columns given as ``[N, ...]`` tensors.
    """

    def __init__(
        self,
        num_samples: int,
        num_classes: int = NUM_CLASSES,
        image_size: int = IMAGE_SIZE,
        noise: float = 0.5,
        seed: int = 0,
        extra_columns: dict[str, torch.Tensor] | None = None,
    ):
        generator = torch.Generator().manual_seed(seed)
        templates = torch.randn(
            num_classes, 3, image_size, image_size, generator=torch.Generator().manual_seed(1234)
        )
        self.labels = torch.arange(num_samples) % num_classes
        noise_images = torch.randn(num_samples, 3, image_size, image_size, generator=generator)
        self.pixel_values = templates[self.labels] + noise * noise_images
        self.extra_columns = extra_columns or {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}
        item.update({name: column[index] for name, column in self.extra_columns.items()})
        return item


def make_args(output_dir, **overrides: Any) -> DistillationArguments:
    """Fast CPU arguments: KD, no saving, log every step, no progress bars."""
    values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "distillation_method": "kd",
        "use_cpu": True,
        "report_to": [],
        "disable_tqdm": True,
        "save_strategy": "no",
        "logging_steps": 1,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "dataloader_num_workers": 0,
        "learning_rate": 1e-3,
        "seed": 0,
    }
    values.update(overrides)
    return DistillationArguments(**values)


class ExampleRecordingTrainer(DistillationTrainer):
    """Records the ``example_id`` of every training batch (streamed splits carry them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen_example_ids: list[list[int]] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen_example_ids.append(inputs["example_id"].tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def write_streaming_parquet(folder, num_files: int, rows_per_file: int, num_classes: int = 3):
    """A local parquet dataset of ``num_files`` shards: ``image`` (16x16 PNG, a colour per
    class plus noise), ``label`` (ClassLabel) and ``example_id`` (0, 1, ...)."""
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from PIL import Image as PILImage

    features = Features(
        {
            "image": Image(),
            "label": ClassLabel(names=[f"class_{index}" for index in range(num_classes)]),
            "example_id": Value("int64"),
        }
    )
    generator = np.random.default_rng(0)
    for shard in range(num_files):
        ids = list(range(shard * rows_per_file, (shard + 1) * rows_per_file))
        labels = [example_id % num_classes for example_id in ids]
        images = [
            PILImage.fromarray(
                (generator.normal(60 + 60 * label, 20, (16, 16, 3))).clip(0, 255).astype("uint8")
            )
            for label in labels
        ]
        Dataset.from_dict(
            {"image": images, "label": labels, "example_id": ids}, features=features
        ).to_parquet(f"{folder}/train-{shard:05d}-of-{num_files:05d}.parquet")
    return folder
