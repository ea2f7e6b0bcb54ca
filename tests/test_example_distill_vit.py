"""End to end: ``examples/distill_vit.py``'s ``main()`` with a patched argv on a tiny budget."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import AutoModelForImageClassification

from hf_kd.models import load_classifier

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "distill_vit.py"
TINY_BUDGET = [
    "--teacher_architecture", "resnet10t",
    "--teacher_num_train_epochs", "1",
    "--student_model_kwargs",
    '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}',
    "--num_train_epochs", "1",
    "--max_train_samples", "96",
    "--max_eval_samples", "64",
    "--per_device_train_batch_size", "32",
    "--logging_steps", "1",
    "--disable_tqdm", "true",
]  # fmt: skip


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("distill_vit_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_default_story_trains_teacher_distils_saves_and_reuses_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example()
    output_dir = tmp_path / "run"
    argv = ["distill_vit.py", "--output_dir", str(output_dir), *TINY_BUDGET]
    monkeypatch.setattr(sys, "argv", argv)
    metrics = example.main()

    results = json.loads((output_dir / "all_results.json").read_text())
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    assert results["eval_accuracy"] == pytest.approx(metrics["eval_accuracy"])
    assert 0.0 <= results["teacher_eval_accuracy"] <= 1.0
    teacher_dir = output_dir / "teacher"
    assert (teacher_dir / "model.safetensors").is_file()
    assert (output_dir / "model.safetensors").is_file()
    assert not list(output_dir.glob("pytorch_model*.bin")), "weights go to safetensors only"

    # The saved student reloads through both the library and plain transformers, same logits.
    student = load_classifier(str(output_dir)).eval()
    plain = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    assert student.config.id2label == {index: str(index) for index in range(10)}
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            student(pixel_values=pixels).logits, plain(pixel_values=pixels).logits
        )

    # A second run reuses the teacher instead of training a new one.
    teacher_weights = teacher_dir / "model.safetensors"
    modified = os.stat(teacher_weights).st_mtime_ns
    monkeypatch.setattr(sys, "argv", [*argv, "--distillation_method", "kd"])
    second = example.main()
    assert os.stat(teacher_weights).st_mtime_ns == modified
    assert second["teacher_eval_accuracy"] == pytest.approx(results["teacher_eval_accuracy"])


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example()
    with pytest.raises(SystemExit) as exit_info:
        example.parse_arguments(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--student_model_name_or_path",
        "--teacher_model_name_or_path",
        "--dataset_name",
        "--distillation_method",
        "--loss_kwargs",
    ):
        assert option in text


def test_later_flags_override_defaults() -> None:
    example = load_example()
    _, data_args, training_args = example.parse_arguments(
        ["--output_dir", "elsewhere", "--num_train_epochs", "2", "--dataset_name", "cifar"]
    )
    assert training_args.output_dir == "elsewhere"
    assert training_args.num_train_epochs == 2
    assert data_args.dataset_name == "cifar"
    assert training_args.distillation_method == "mcld"
    assert training_args.remove_unused_columns is False
