"""DistillationTrainer saving: the student folder, its model card, checkpoints, the speed-up."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
import timm
import torch
from distill_helpers import NUM_CLASSES, PatternDataset, make_args, tiny_timm, tiny_vit
from huggingface_hub import ModelCard
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    TimmWrapperForImageClassification,
)

from hf_kd.model_card import CARD_DATA_FILE, TRAINING_CURVES_FILE, StudentCard
from hf_kd.models import count_parameters, preprocessing_for
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.trainer import DistillationTrainer
from tests.hub_client import assert_same_logits
from tests.hub_metadata import metadata_errors

STUDENT_PREPROCESSING = ImagePreprocessing(
    image_size=(16, 16), mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3), interpolation="bilinear"
)
STUDENT_FILES = {"config.json", "model.safetensors"}
CARD_FILES = {"README.md", CARD_DATA_FILE, TRAINING_CURVES_FILE}


def read_card(folder) -> StudentCard:
    return StudentCard.from_dict(json.loads((folder / CARD_DATA_FILE).read_text()))


def pixel_batch() -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("make_student", [tiny_vit, tiny_timm], ids=["vit", "timm"])
def test_save_model_leaves_a_complete_student_folder(tmp_path, make_student):
    student, teacher = make_student(seed=1), tiny_vit(seed=2)
    output_dir = tmp_path / "student"
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(output_dir, max_steps=2, eval_strategy="steps", eval_steps=1),
        train_dataset=PatternDataset(16),
        eval_dataset=PatternDataset(8, seed=1),
        student_preprocessing=STUDENT_PREPROCESSING,
        teacher_name="someone/teacher-vit",
        dataset_name="someone/patterns",
        eval_split_name="test",
        teacher_eval_accuracy=0.75,
    )
    trainer.train()
    metrics = trainer.evaluate()  # the latest evaluation is the one the card reports
    trainer.save_model()

    is_timm = make_student is tiny_timm
    processor_file = set() if is_timm else {"preprocessor_config.json"}
    # no training_args.bin, no pickle: safetensors weights and JSON only
    assert {path.name for path in output_dir.iterdir()} == STUDENT_FILES | CARD_FILES | (
        processor_file
    )

    reloaded = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    student.eval()
    with torch.no_grad():
        expected = student(pixel_values=pixel_batch()).logits
        assert_same_logits(reloaded(pixel_values=pixel_batch()).logits, expected)
        if is_timm:
            via_timm = timm.create_model(f"local-dir:{output_dir}", pretrained=True).eval()
            assert_same_logits(via_timm(pixel_batch()), expected)
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert preprocessing_for(reloaded, processor) == STUDENT_PREPROCESSING

    readme = (output_dir / "README.md").read_text()
    assert metadata_errors(readme) == []
    metadata = ModelCard(readme).data
    assert metadata.base_model is None  # trained from scratch; the teacher is no base model
    assert "distilled from the teacher\n`someone/teacher-vit (vit with hidden_size=32" in readme
    assert metadata.datasets == ["someone/patterns"]
    assert metadata.library_name == ("timm" if is_timm else "transformers")
    [result] = metadata.eval_results
    assert (result.dataset_type, result.dataset_split) == ("someone/patterns", "test")
    assert result.metric_value == round(metrics["eval_accuracy"], 4)
    assert "| Teacher (top-1) | `someone/patterns` | test | 75.00% |" in readme
    assert "Measured inference speed-up" in readme
    assert "![Training curves](training_curves.png)" in readme

    card = read_card(output_dir)
    assert card.student.parameters == count_parameters(student)
    assert card.teacher.parameters == count_parameters(teacher)
    assert (card.method, card.loss_hyperparameters) == ("kd", {"temperature": 4.0})
    assert (card.ce_weight, card.kd_weight, card.warmup_epochs) == (1.0, 1.0, 0.0)
    assert card.eval_top5_accuracy == metrics["eval_top5_accuracy"]
    setup = card.training
    assert (setup.global_batch_size, setup.world_size, setup.precision, setup.seed) == (
        8,
        1,
        "fp32",
        0,
    )
    # what was trained: 2 steps of 8 of 16 images (the planned num_train_epochs is 3)
    assert (setup.epochs, setup.steps) == (trainer.state.epoch, 2) == (1.0, 2)
    assert setup.hyperparameters["max_steps"] == 2
    assert "num_train_epochs" not in setup.hyperparameters
    assert setup.hyperparameters["per_device_train_batch_size"] == 8
    assert (setup.dataset, card.eval_split) == ("someone/patterns", "test")
    assert "| epochs trained | `1.0` |" in readme
    architecture, model_args = (
        ("test_efficientnet_gn", {}) if is_timm else ("vit", {"hidden_size": 32})
    )
    assert card.student.architecture == architecture
    assert model_args.items() <= card.student.model_args.items()
    assert card.student.name.startswith(architecture)
    assert card.training.split_sizes == {"train": 16, "validation": 8}
    assert "the student was trained from scratch" in readme
    assert card.framework_versions["hf-kd"] and card.framework_versions["torch"]
    # the usage snippets load this very folder, the way they are written in the card
    assert f'from_pretrained("{output_dir}")' in readme
    if is_timm:
        [timm_name] = re.findall(r'timm\.create_model\("([^"]+)", pretrained=True\)', readme)
        assert timm_name == f"local-dir:{output_dir}"
        with torch.no_grad():
            snippet_model = timm.create_model(timm_name, pretrained=True).eval()
            assert_same_logits(snippet_model(pixel_batch()), expected)
    assert card.speed is not None and card.speed.batch_size == 8  # the evaluation batch
    assert card.speed.teacher_latency_ms > 0 and card.speed.student_latency_ms > 0
    assert card.model_name == "student" and card.repo_id is None


def test_checkpoints_hold_the_student_alone_in_the_two_library_layout(tmp_path):
    student = tiny_timm(seed=1)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=tiny_vit(seed=2),
        args=make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
        train_dataset=PatternDataset(16),
        student_preprocessing=STUDENT_PREPROCESSING,
    )
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    names = {path.name for path in checkpoint.iterdir()}
    assert STUDENT_FILES <= names
    assert not names & CARD_FILES  # cards are for final saves, not for every checkpoint
    assert "training_args.bin" not in names
    # the way _load_from_checkpoint reloads it, and the way timm users load it
    reloaded = TimmWrapperForImageClassification.from_pretrained(checkpoint).eval()
    via_timm = timm.create_model(f"local-dir:{checkpoint}", pretrained=True).eval()
    student.eval()
    with torch.no_grad():
        expected = student(pixel_values=pixel_batch()).logits
        assert_same_logits(reloaded(pixel_values=pixel_batch()).logits, expected)
        assert_same_logits(via_timm(pixel_batch()), expected)


class PatternStream(torch.utils.data.IterableDataset):
    """The samples of a :class:`PatternDataset` as a stream: nothing to index."""

    def __init__(self, num_samples: int):
        self.samples = PatternDataset(num_samples)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.samples[index] for index in range(len(self.samples)))


def test_a_failed_speed_measurement_is_a_warning_and_the_student_is_saved(tmp_path, caplog):
    trainer = DistillationTrainer(
        model=tiny_vit(seed=1),
        teacher_model=tiny_vit(seed=2),
        args=make_args(tmp_path, max_steps=1),
        train_dataset=PatternStream(8),  # no evaluation set and a stream: no batch to time
    )
    with caplog.at_level(logging.WARNING, logger="hf_kd.trainer"):
        trainer.save_model()
    assert "could not measure the inference speed-up" in caplog.text
    assert "no indexable dataset" in caplog.text
    # saved before training: nothing logged, so no curves
    assert {path.name for path in tmp_path.iterdir()} == STUDENT_FILES | CARD_FILES - {
        TRAINING_CURVES_FILE
    }
    assert read_card(tmp_path).speed is None
    assert "Inference speed-up: not measured." in (tmp_path / "README.md").read_text()


def test_card_of_a_student_distilled_from_cached_teacher_logits(tmp_path):
    teacher_logits = torch.randn(16, NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    trainer = DistillationTrainer(
        model=tiny_timm(seed=1),
        teacher_model=None,
        args=make_args(tmp_path, max_steps=1),
        train_dataset=PatternDataset(16, extra_columns={"teacher_logits": teacher_logits}),
        teacher_name="someone/big-teacher",
    )
    trainer.train()
    trainer.save_model()
    card = read_card(tmp_path)
    assert (card.teacher.name, card.teacher.parameters, card.teacher.library) == (
        "someone/big-teacher",
        None,
        None,
    )
    assert card.speed is None and card.eval_accuracy is None
    readme = (tmp_path / "README.md").read_text()
    assert "| Teacher | `someone/big-teacher` | unknown | unknown |" in readme
    assert "fewer parameters" not in readme
    assert ModelCard(readme).data.eval_results is None  # nothing evaluated, nothing claimed
