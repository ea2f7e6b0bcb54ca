"""Cards of models trained without distillation, and usage snippets that run.

A ``DistillationTrainer`` run with ``kd_weight=0`` (the benchmarks' CE-only student) and a
``ClassifierTrainer`` run (a teacher trained with cross-entropy) get cards that say so: no
teacher, speed-up, method or citation. A saved ``cifar_resnet*`` model (a timm architecture
that exists once hf-kd is imported) gets usage snippets that run in a fresh process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from distill_helpers import PatternDataset, make_args, tiny_timm, tiny_vit
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoModelForImageClassification, TrainerState, TrainingArguments

from hf_kd.classifier_trainer import ClassifierTrainer
from hf_kd.data import DecodedImages, collate_decoded_batch, decode_split, load_image_dataset
from hf_kd.metrics import compute_accuracy_metrics
from hf_kd.model_card import CARD_DATA_FILE, TRAINING_CURVES_FILE, StudentCard, render_model_card
from hf_kd.models import load_classifier
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.trainer import DistillationTrainer
from tests.hub_client import assert_same_logits
from tests.hub_metadata import metadata_errors

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR_PREPROCESSING = ImagePreprocessing(
    image_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear"
)
# what only a distilled student's card states
DISTILLATION_CLAIMS = (
    "distilled from",
    "Teacher → student",
    "speed-up",
    "## Distillation method",
    "How to cite",
    "@article",
    "knowledge-distillation",
)
NO_DISTILLATION = "trained with cross-entropy on the\nlabels only (no distillation)"


def read_card(folder: Path) -> StudentCard:
    return StudentCard.from_dict(json.loads((folder / CARD_DATA_FILE).read_text()))


def assert_states_no_distillation(readme: str) -> None:
    assert NO_DISTILLATION in readme
    for claim in DISTILLATION_CLAIMS:
        assert claim not in readme, claim
    assert metadata_errors(readme) == []


# --- a DistillationTrainer run with kd_weight = 0 -----------------------------------------


def test_ce_only_student_card_states_no_distillation(tmp_path):
    output_dir = tmp_path / "ce-only"
    trainer = DistillationTrainer(
        model=tiny_timm(seed=1),
        teacher_model=tiny_vit(seed=2),
        args=make_args(output_dir, max_steps=2, kd_weight=0.0, warmup_epochs=0),
        train_dataset=PatternDataset(16),
        eval_dataset=PatternDataset(8, seed=1),
        teacher_name="someone/teacher-vit",
        dataset_name="someone/patterns",
        eval_split_name="test",
        teacher_eval_accuracy=0.75,
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()

    readme = (output_dir / "README.md").read_text()
    assert_states_no_distillation(readme)
    assert "someone/teacher-vit" not in readme and "Teacher (top-1)" not in readme
    card = ModelCard(readme)
    [result] = card.data.eval_results
    assert result.metric_value == round(metrics["eval_accuracy"], 4)
    assert "knowledge-distillation" not in card.data.tags and "kd" not in card.data.tags
    # the training setup, every hyperparameter, the seed and the curves stay
    assert "| `kd_weight` | `0.0` |" in readme and "| seed | `0` |" in readme
    assert "| `learning_rate` | `0.001` |" in readme
    assert f"![Training curves]({TRAINING_CURVES_FILE})" in readme
    assert "import hf_kd" not in readme  # a timm architecture that needs no registration
    stored = read_card(output_dir)
    assert not stored.distilled and stored.speed is None


def test_cards_without_a_teacher_round_trip_and_old_cards_still_read(tmp_path):
    output_dir = tmp_path / "ce-only"
    trainer = DistillationTrainer(
        model=tiny_timm(seed=1),
        teacher_model=tiny_vit(seed=2),
        args=make_args(output_dir, max_steps=1),
        train_dataset=PatternDataset(8),
    )
    trainer.train()
    distilled = trainer.create_model_card()
    assert distilled.distilled and distilled.teacher is not None
    # an old card (a teacher, kd_weight 1) reads back as it was
    assert read_card(output_dir) == distilled
    without_teacher = StudentCard.from_dict({**distilled.to_dict(), "teacher": None})
    assert without_teacher.teacher is None and not without_teacher.distilled
    assert StudentCard.from_dict(without_teacher.to_dict()) == without_teacher
    assert_states_no_distillation(render_model_card(without_teacher))


# --- a ClassifierTrainer run --------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Decoded 32x32 digits: 24 training images, 16 test images."""
    data = load_image_dataset("digits")
    cache_dir = tmp_path_factory.mktemp("decoded")
    split = data.splits["train"]
    train = decode_split(split.select(range(24)), (32, 32), "bilinear", cache_dir=cache_dir)
    test = decode_split(split.select(range(24, 40)), (32, 32), "bilinear", cache_dir=cache_dir)
    return data.id2label, DecodedImages(train, train=True), DecodedImages(test, train=False)


def classifier_trainer(
    model, output_dir: Path, digits, optimizers=(None, None)
) -> ClassifierTrainer:
    _, train, test = digits
    return ClassifierTrainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(output_dir),
            max_steps=3,
            per_device_train_batch_size=8,
            per_device_eval_batch_size=8,
            learning_rate=0.05,
            logging_steps=1,
            use_cpu=True,
            report_to=[],
            disable_tqdm=True,
            save_strategy="no",
            dataloader_num_workers=0,
            remove_unused_columns=False,
            seed=3,
        ),
        train_dataset=train,
        eval_dataset=test,
        data_collator=collate_decoded_batch,
        compute_metrics=compute_accuracy_metrics,
        preprocessing=CIFAR_PREPROCESSING,
        dataset_name="digits",
        eval_split_name="test",
        optimizers=optimizers,
    )


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory, digits):
    """A random-init cifar_resnet8 trained 3 steps by ClassifierTrainer, evaluated, saved."""
    work = tmp_path_factory.mktemp("classifier")
    model = load_classifier("cifar_resnet8", id2label=digits[0], pretrained=False)
    trainer = classifier_trainer(model, work / "run", digits)
    trainer.train()
    metrics = trainer.evaluate()
    trainer.state.save_to_json(str(work / "trainer_state.json"))
    trainer.save_model(str(work / "saved"))
    return trainer, metrics, work


def test_classifier_trainer_saves_a_folder_with_a_true_card(trained_classifier):
    trainer, metrics, work = trained_classifier
    folder = work / "saved"
    readme = (folder / "README.md").read_text()
    assert_states_no_distillation(readme)
    assert "the model was trained from scratch (random initialisation)" in readme
    [result] = ModelCard(readme).data.eval_results
    assert (result.metric_value, result.dataset_split) == (
        round(metrics["eval_accuracy"], 4),
        "test",
    )
    card = read_card(folder)
    assert card.teacher is None and card.method is None and card.kd_weight == 0
    assert (card.training.seed, card.training.steps, card.training.dataset) == (3, 3, "digits")
    assert card.training.split_sizes == {"train": 24, "validation": 16}
    assert card.training.hyperparameters["learning_rate"] == 0.05
    assert (
        card.training_curves == TRAINING_CURVES_FILE and (folder / TRAINING_CURVES_FILE).is_file()
    )
    assert card.framework_versions["timm"] == timm.__version__
    assert not list(folder.glob("*.bin")) and (folder / "model.safetensors").is_file()

    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = trainer.model.eval()
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
        reloaded = AutoModelForImageClassification.from_pretrained(folder).eval()
        assert_same_logits(reloaded(pixel_values=pixels).logits, expected)
        via_timm = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        assert_same_logits(via_timm(pixels), expected)


def test_the_card_states_the_optimizer_the_trainer_was_given(tmp_path, digits):
    """A run given its own optimizer and schedule ignores the arguments' learning rate,
    optimizer and scheduler: the card states the ones that ran."""
    model = load_classifier("cifar_resnet8", id2label=digits[0], pretrained=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.8, weight_decay=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)
    trainer = classifier_trainer(model, tmp_path / "run", digits, (optimizer, scheduler))
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    hyperparameters = read_card(tmp_path / "saved").training.hyperparameters
    assert (hyperparameters["learning_rate"], hyperparameters["weight_decay"]) == (0.2, 1e-3)
    assert hyperparameters["optimizer"]["class"] == "SGD"
    assert hyperparameters["optimizer"]["momentum"] == 0.8
    assert hyperparameters["lr_scheduler"] == {
        "class": "CosineAnnealingLR",
        "T_max": 3,
        "eta_min": 0.0,
    }
    assert "optim" not in hyperparameters and "lr_scheduler_type" not in hyperparameters
    readme = (tmp_path / "saved" / "README.md").read_text()
    assert '"class": "CosineAnnealingLR"' in readme and "`0.05`" not in readme


def test_classifier_card_from_a_finished_runs_trainer_state(trained_classifier, digits):
    """The coordinator's path: a trained model, the run's trainer_state.json, no training."""
    trainer, metrics, work = trained_classifier
    fresh = classifier_trainer(trainer.model, work / "elsewhere", digits)
    fresh.state = TrainerState.load_from_json(str(work / "trainer_state.json"))
    fresh.save_model(str(work / "from_state"))
    card = read_card(work / "from_state")
    assert card.eval_accuracy == pytest.approx(metrics["eval_accuracy"])
    assert (card.training.steps, card.training.epochs) == (
        3,
        read_card(work / "saved").training.epochs,
    )
    assert card.training_curves == TRAINING_CURVES_FILE


# --- usage snippets that run ------------------------------------------------------------


def usage_snippets(readme: str) -> list[str]:
    """The card's python code blocks: the transformers snippet, then the timm one."""
    return re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)


def run_snippet(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -c code`` in a fresh process that finds this checkout's hf_kd, offline."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_usage_snippets_of_an_hf_kd_architecture_run_in_a_fresh_process(
    trained_classifier, tmp_path
):
    _, _, work = trained_classifier
    readme = (work / "saved" / "README.md").read_text()
    snippets = usage_snippets(readme)
    assert len(snippets) == 2
    import_line = "import hf_kd  # registers the cifar_resnet8 architecture with timm\n"
    Image.new("RGB", (40, 40), (120, 30, 200)).save(tmp_path / "image.jpg")
    for snippet in snippets:
        assert snippet.startswith(import_line)
        completed = run_snippet(snippet, tmp_path)
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.strip()
    # the import is what makes it run: without it timm does not know the architecture
    without_import = run_snippet(snippets[1].removeprefix(import_line), tmp_path)
    assert without_import.returncode != 0
    assert "cifar_resnet8" in without_import.stderr
