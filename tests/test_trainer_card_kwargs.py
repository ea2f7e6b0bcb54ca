"""``DistillationTrainer.create_model_card`` and ``push_to_hub(**kwargs)`` take the
arguments of transformers' ``Trainer`` (in its positional order) and put them in the card."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

from huggingface_hub import ModelCard
from transformers import Trainer

from hf_kd.trainer import DistillationTrainer
from tests.hub_client import run_in_fresh_process
from tests.hub_metadata import metadata_errors

pytest_plugins = ("tests.hub_server",)  # the loopback_hub fixture

SCRIPT = Path(__file__).resolve().parent / "scripts" / "push_with_card_kwargs.py"


def test_create_model_card_keeps_the_trainer_signature():
    ours = inspect.signature(DistillationTrainer.create_model_card).parameters
    theirs = inspect.signature(Trainer.create_model_card).parameters
    positional = [name for name, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == list(theirs)
    push_ours = inspect.signature(DistillationTrainer.push_to_hub).parameters
    assert list(push_ours) == list(inspect.signature(Trainer.push_to_hub).parameters)


def test_push_with_run_image_classification_card_kwargs(loopback_hub, tmp_path):
    repo_id = f"{loopback_hub.user}/vit-card-kwargs"
    output_dir = tmp_path / "student"
    command = [sys.executable, str(SCRIPT), str(output_dir), repo_id]
    run_in_fresh_process(loopback_hub, command, tmp_path / "home")

    files = loopback_hub.files(repo_id)
    readme = files["README.md"].content.decode()
    assert metadata_errors(readme) == []
    card = ModelCard(readme)
    data = card.data
    assert data.language == ["en"]
    assert {"image-classification", "vision", "knowledge-distillation", "hf-kd"} <= set(data.tags)
    assert len(data.tags) == len(set(data.tags))
    assert data.base_model == "google/vit-base-patch16-224-in21k"  # finetuned_from
    assert data.datasets == ["someone/patterns"]
    [result] = data.eval_results
    assert (result.task_type, result.dataset_type, result.dataset_args) == (
        "image-classification",
        "someone/patterns",
        "shapes",
    )
    assert result.dataset_name == "someone/patterns"
    assert "distilled from the teacher\n`someone/teacher-vit (vit with" in card.text
    stored = json.loads(files["student_card.json"].content)
    assert stored["student"]["initialisation"] == "google/vit-base-patch16-224-in21k"
    assert stored["hub_metadata"]["dataset_args"] == ["shapes"]
    assert files["README.md"].content == (output_dir / "README.md").read_bytes()
