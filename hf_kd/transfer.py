"""Linear-probe transfer evaluation of a (distilled) student's representation.

The protocol of the distillation literature (CRD, Tian et al., ICLR 2020; reused by MCLD on
STL-10 and Tiny-ImageNet): freeze the student, take its penultimate pooled features (the
input of its classification head), train a linear classifier on the target dataset's train
split, and report top-1 accuracy on its test split (hf-kd's ``evaluate`` accuracy module,
:func:`hf_kd.metrics.load_accuracy_metric`).

* Images are converted to RGB and resized straight to the student's input size (no crop),
  then normalised with the student's own mean/std.
* Features are computed once, in batches, under ``torch.inference_mode`` with the student in
  eval mode, and cached; the probe's epochs reuse them.
* The probe (:class:`LinearProbeConfig`): features standardised with the train split's
  per-dimension mean and std, a zero-initialised ``nn.Linear``, mini-batch SGD with momentum
  0.9, learning rate 0.1 with cosine decay to 0, weight decay 5e-4, batch size 256, 30
  epochs, cross-entropy, seeded shuffling. Standardisation makes one learning rate work for
  any student's feature scale.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset
from PIL import Image as PILImage
from torch import Tensor, nn
from transformers import PreTrainedModel

from hf_kd.metrics import load_accuracy_metric
from hf_kd.models import is_timm_model
from hf_kd.preprocessing import ImagePreprocessing, pil_resampling
from hf_kd.progress import progress_bar

logger = logging.getLogger(__name__)

TRANSFER_RESULTS_FILE = "transfer_results.json"
EVAL_SPLIT_CANDIDATES = ("test", "valid", "validation")


@dataclass(frozen=True)
class TransferDatasetSpec:
    hub_id: str
    display_name: str
    eval_split: str


# The two transfer datasets of CRD and MCLD; ``--dataset_name`` accepts the alias or Hub id.
TRANSFER_DATASETS: dict[str, TransferDatasetSpec] = {
    "stl10": TransferDatasetSpec("tanganke/stl10", "STL-10", "test"),
    "tiny-imagenet": TransferDatasetSpec("zh-plus/tiny-imagenet", "Tiny-ImageNet", "valid"),
}


@dataclass(frozen=True)
class LinearProbeConfig:
    """Hyperparameters of the linear probe (SGD, momentum 0.9, cosine learning-rate decay)."""

    epochs: int = 30
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    standardize_features: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}"
            )
        if self.learning_rate <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(
                "learning_rate must be > 0, weight_decay >= 0 and momentum in [0, 1), got "
                f"{self.learning_rate}, {self.weight_decay}, {self.momentum}"
            )


@dataclass(frozen=True)
class TransferData:
    """The two splits of a transfer dataset and how to read them."""

    dataset: str
    display_name: str
    train: Dataset
    eval: Dataset
    eval_split: str
    image_column: str
    label_column: str
    num_classes: int


@dataclass
class TransferResult:
    """Linear-probe top-1 accuracy of a frozen model on one target dataset."""

    dataset: str
    display_name: str
    eval_split: str
    top1_accuracy: float
    num_classes: int
    num_train_samples: int
    num_eval_samples: int
    feature_dim: int
    image_size: tuple[int, int]
    probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TransferResult:
        data = dict(data)
        data["image_size"] = tuple(data["image_size"])
        data["probe"] = LinearProbeConfig(**data.get("probe", {}))
        return cls(**data)


# -- data ------------------------------------------------------------------------------------


def load_transfer_data(
    dataset_name: str,
    *,
    train_split: str = "train",
    eval_split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
) -> TransferData:
    """Load a transfer dataset by alias (``stl10``, ``tiny-imagenet``), Hub id or local path.

    The eval split defaults to the dataset's known one (Tiny-ImageNet: ``valid``), else the
    first of ``test``, ``valid``, ``validation`` present. Image and label columns are found
    from the features (``Image`` and ``ClassLabel``) unless named. ``max_*_samples`` take a
    seeded random subset (both Hub datasets are sorted by class).
    """
    spec = TRANSFER_DATASETS.get(dataset_name) or next(
        (spec for spec in TRANSFER_DATASETS.values() if spec.hub_id == dataset_name), None
    )
    source = spec.hub_id if spec is not None else dataset_name
    splits = load_dataset(source)
    if not isinstance(splits, DatasetDict):
        raise ValueError(f"{source} did not load as a dataset with named splits")
    eval_split = eval_split or _eval_split(splits, spec)
    for split in (train_split, eval_split):
        if split not in splits:
            raise ValueError(f"{source} has no split {split!r}; splits: {sorted(splits)}")
    train, evaluation = splits[train_split], splits[eval_split]
    image_column = image_column or _column_of_type(train, Image, "image", ("image", "img"))
    label_column = label_column or _column_of_type(train, ClassLabel, "label", ("label", "labels"))
    for column in (image_column, label_column):
        if column not in train.column_names or column not in evaluation.column_names:
            raise ValueError(
                f"column {column!r} is missing from {source}; columns: {train.column_names}"
            )
    label_feature = train.features[label_column]
    num_classes = (
        label_feature.num_classes
        if isinstance(label_feature, ClassLabel)
        else int(max(train[label_column])) + 1
    )
    return TransferData(
        dataset=source,
        display_name=spec.display_name if spec is not None else Path(source).name,
        train=_subset(train, max_train_samples, seed),
        eval=_subset(evaluation, max_eval_samples, seed),
        eval_split=eval_split,
        image_column=image_column,
        label_column=label_column,
        num_classes=num_classes,
    )


def _eval_split(splits: DatasetDict, spec: TransferDatasetSpec | None) -> str:
    if spec is not None and spec.eval_split in splits:
        return spec.eval_split
    for candidate in EVAL_SPLIT_CANDIDATES:
        if candidate in splits:
            return candidate
    raise ValueError(
        f"no evaluation split among {EVAL_SPLIT_CANDIDATES}; splits: {sorted(splits)}; "
        "name one with eval_split"
    )


def _column_of_type(dataset: Dataset, feature_type: type, kind: str, names: Sequence[str]) -> str:
    typed = [
        name for name, feature in dataset.features.items() if isinstance(feature, feature_type)
    ]
    if len(typed) == 1:
        return typed[0]
    named = [name for name in names if name in dataset.column_names]
    if named:
        return named[0]
    raise ValueError(
        f"cannot tell the {kind} column among {dataset.column_names}; name it "
        f"(--{kind}_column_name)"
    )


def _subset(dataset: Dataset, max_samples: int | None, seed: int) -> Dataset:
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_samples))


def pixel_values_from_images(
    images: Sequence[PILImage.Image], preprocessing: ImagePreprocessing
) -> Tensor:
    """``[B, 3, H, W]`` float32: RGB, resized to the input size, scaled to [0, 1], normalised."""
    height, width = preprocessing.image_size
    resample = pil_resampling(preprocessing.interpolation)
    arrays = [
        np.asarray(
            image.convert("RGB").resize((width, height), resample=resample), dtype=np.float32
        )
        for image in images
    ]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


# -- features --------------------------------------------------------------------------------


def classification_head(model: PreTrainedModel) -> nn.Linear:
    """The final linear layer of a transformers image classifier (``num_labels`` outputs).

    Looked up inside ``model.classifier`` when there is one (ViT, ConvNeXt, ResNet, Swin...),
    else in the whole model; the last such ``nn.Linear`` registered is the head.
    """
    scope = getattr(model, "classifier", None)
    scope = scope if isinstance(scope, nn.Module) else model
    heads = [
        module
        for module in scope.modules()
        if isinstance(module, nn.Linear) and module.out_features == model.config.num_labels
    ]
    if not heads:
        raise ValueError(
            f"cannot find a linear classification head with {model.config.num_labels} outputs "
            f"in {type(model).__name__}"
        )
    return heads[-1]


def extract_features(model: PreTrainedModel, pixel_values: Tensor) -> Tensor:
    """Penultimate pooled features ``[B, D]``: what the classification head receives.

    timm students: ``forward_head(forward_features(x), pre_logits=True)`` (timm's own
    definition of pre-logits features). transformers models: the input of the head found by
    :func:`classification_head`, captured with a forward pre-hook during a normal forward
    (e.g. ViT: the final-layernormed [CLS] token). Call it under ``no_grad`` in eval mode.
    """
    if is_timm_model(model):
        timm_model = model.timm_model
        pixel_values = pixel_values.to(model.device, model.dtype)
        return timm_model.forward_head(timm_model.forward_features(pixel_values), pre_logits=True)
    captured: list[Tensor] = []
    handle = classification_head(model).register_forward_pre_hook(
        lambda module, args: captured.append(args[0])
    )
    try:
        model(pixel_values=pixel_values.to(model.device, model.dtype))
    finally:
        handle.remove()
    return captured[-1].flatten(1)


def compute_features(
    model: PreTrainedModel,
    dataset: Dataset,
    *,
    image_column: str,
    label_column: str,
    preprocessing: ImagePreprocessing,
    batch_size: int = 128,
    disable_tqdm: bool = False,
) -> tuple[Tensor, Tensor]:
    """Features ``[N, D]`` (float32, on the model's device) and labels ``[N]`` of a split.

    One pass, in batches, in eval mode without autograd, with a progress bar over the
    images (:func:`hf_kd.progress.progress_bar`); the model's mode is restored.
    """
    was_training = model.training
    model.eval()
    features, labels = [], []
    try:
        bar = progress_bar(
            desc="Extracting features", total=len(dataset), unit="img", disable=disable_tqdm
        )
        with torch.inference_mode(), bar:
            for start in range(0, len(dataset), batch_size):
                batch = dataset[start : start + batch_size]
                pixel_values = pixel_values_from_images(batch[image_column], preprocessing)
                features.append(extract_features(model, pixel_values).float())
                labels.append(torch.as_tensor(batch[label_column], dtype=torch.long))
                bar.update(len(labels[-1]))
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("the dataset split is empty")
    return torch.cat(features), torch.cat(labels).to(features[0].device)


# -- linear probe ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearProbe:
    """A trained probe: ``logits = linear((features - mean) / std)``."""

    linear: nn.Linear
    mean: Tensor
    std: Tensor

    def predict(self, features: Tensor) -> Tensor:
        with torch.no_grad():
            return self.linear((features - self.mean) / self.std).argmax(dim=1)


def train_linear_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    config: LinearProbeConfig,
    *,
    disable_tqdm: bool = False,
) -> LinearProbe:
    """Fit a linear classifier on frozen ``features`` with mini-batch SGD (see the module doc).

    Standardisation: ``(x - mean) / std`` per feature dimension, from these features, with
    ``std`` clamped at 1e-6 so that a constant dimension stays finite.
    """
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    features = features.detach().float()
    if config.standardize_features:
        mean, std = features.mean(dim=0), features.std(dim=0).clamp_min(1e-6)
    else:
        mean, std = torch.zeros_like(features[0]), torch.ones_like(features[0])
    inputs = (features - mean) / std
    generator = torch.Generator().manual_seed(config.seed)
    linear = nn.Linear(inputs.shape[1], num_classes).to(inputs.device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.SGD(
        linear.parameters(),
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(inputs) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.epochs * steps_per_epoch
    )
    for _ in progress_bar(
        range(config.epochs), desc="Training the linear probe", unit="epoch", disable=disable_tqdm
    ):
        order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
        for start in range(0, len(inputs), config.batch_size):
            indices = order[start : start + config.batch_size]
            loss = F.cross_entropy(linear(inputs[indices]), labels[indices], reduction="mean")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return LinearProbe(linear.requires_grad_(False), mean, std)


def evaluate_transfer(
    model: PreTrainedModel,
    data: TransferData,
    preprocessing: ImagePreprocessing,
    *,
    probe_config: LinearProbeConfig | None = None,
    batch_size: int = 128,
    disable_tqdm: bool = False,
) -> TransferResult:
    """Run the whole protocol: frozen features of both splits, probe on train, top-1 on eval.

    Feature extraction and probe training show progress bars unless ``disable_tqdm``.
    """
    probe_config = probe_config or LinearProbeConfig()
    read = {
        "image_column": data.image_column,
        "label_column": data.label_column,
        "preprocessing": preprocessing,
        "batch_size": batch_size,
        "disable_tqdm": disable_tqdm,
    }
    train_features, train_labels = compute_features(model, data.train, **read)
    eval_features, eval_labels = compute_features(model, data.eval, **read)
    logger.info(
        "transfer %s: %d train / %d eval features of dim %d",
        data.display_name,
        len(train_features),
        len(eval_features),
        train_features.shape[1],
    )
    probe = train_linear_probe(
        train_features, train_labels, data.num_classes, probe_config, disable_tqdm=disable_tqdm
    )
    accuracy = load_accuracy_metric().compute(
        predictions=probe.predict(eval_features).cpu().numpy(),
        references=eval_labels.cpu().numpy(),
    )["accuracy"]
    return TransferResult(
        dataset=data.dataset,
        display_name=data.display_name,
        eval_split=data.eval_split,
        top1_accuracy=accuracy,
        num_classes=data.num_classes,
        num_train_samples=len(train_features),
        num_eval_samples=len(eval_features),
        feature_dim=int(train_features.shape[1]),
        image_size=preprocessing.image_size,
        probe=probe_config,
    )


# -- results file ----------------------------------------------------------------------------


def read_transfer_results(output_dir: str | Path) -> list[TransferResult]:
    """The results in ``output_dir/transfer_results.json``; ``[]`` when there is none."""
    path = Path(output_dir) / TRANSFER_RESULTS_FILE
    if not path.is_file():
        return []
    return [TransferResult.from_dict(entry) for entry in json.loads(path.read_text())["results"]]


def merge_transfer_results(
    results: Sequence[TransferResult], new: TransferResult
) -> list[TransferResult]:
    """``results`` with ``new`` replacing any earlier result on the same dataset and split."""
    kept = [
        result
        for result in results
        if (result.dataset, result.eval_split) != (new.dataset, new.eval_split)
    ]
    return [*kept, new]


def write_transfer_results(output_dir: str | Path, result: TransferResult) -> Path:
    """Add ``result`` to ``output_dir/transfer_results.json`` (one entry per dataset/split)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = merge_transfer_results(read_transfer_results(output_dir), result)
    path = output_dir / TRANSFER_RESULTS_FILE
    payload = {"results": [entry.to_dict() for entry in results]}
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp_path, path)
    return path
