"""Keep each finished model as a Hub-ready folder: the weights and preprocessing written by
:func:`hf_kd.hub.save_student` (through the trainer's ``save_model``: safetensors that both
timm and transformers load) and the model card of :mod:`hf_kd.model_card` (the test top-1 in
its model-index, the method and every hyperparameter, the seed, the training curves)."""

from __future__ import annotations

from pathlib import Path

from transformers import Trainer

from benchmarks.cifar100.config import HUB_DATASET, TierConfig

CARD_TAGS = ("cifar100", "hf-kd-benchmark")
KEPT_FILES = ("config.json", "model.safetensors", "README.md")


def card_dataset(tier: TierConfig) -> str:
    """The training data as the cards name it."""
    if tier.image_size == 32:
        return "CIFAR-100"
    return f"CIFAR-100 at {tier.image_size}x{tier.image_size} (2x2 box-downsampled)"


def keep_model(trainer: Trainer, folder: Path) -> Path:
    """Save the trainer's model to ``folder`` with its card, named as the folder (the
    dataset's Hub id in the card's metadata; the trainer names the data as
    :func:`card_dataset` does)."""
    trainer.save_model(str(folder), _internal_call=True)  # weights and preprocessing only
    trainer.create_model_card(
        model_name=folder.name,
        dataset_tags=HUB_DATASET,
        tags=list(CARD_TAGS),
        output_dir=str(folder),
    )
    return folder


def is_kept(folder: Path) -> bool:
    """Whether ``folder`` holds a kept model: weights, config and card."""
    return all(
        (folder / name).is_file() for name in ("config.json", "model.safetensors", "README.md")
    )
