"""End to end: ``examples/distill_vit.py``'s ``main()`` with a patched argv on a tiny budget,
and the same run as a script publishing its student to the loopback Hub server."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForImageClassification

from hf_kd.model_card import CARD_DATA_FILE, TRAINING_CURVES_FILE
from hf_kd.models import count_parameters, load_classifier
from tests.hub_client import (
    assert_same_logits,
    push_and_pull_in_fresh_process,
    run_in_fresh_process,
)
from tests.hub_metadata import metadata_errors

pytest_plugins = ("tests.hub_server",)  # the loopback_hub fixture

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


def load_example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Import examples/distill_vit.py (examples/ is not a package) for its ``main``."""
    spec = importlib.util.spec_from_file_location("distill_vit_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # its dataclasses resolve their string annotations through sys.modules
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_default_story_trains_teacher_distils_saves_and_reuses_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example(monkeypatch)
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
    assert not list(output_dir.glob("*.bin")), "weights must be saved as safetensors only"

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


@pytest.mark.slow
def test_default_story_pushed_to_the_hub_reloads_with_both_libraries(loopback_hub, tmp_path):
    """The default story as a script with --push_to_hub: the student, its card and curves
    reach the Hub in one commit; a fresh process loads it with transformers and with timm
    and reads the test accuracy back from the card's model-index."""
    repo_id = f"{loopback_hub.user}/vit-digits-mcld"
    output_dir = tmp_path / "run"
    command = [sys.executable, str(EXAMPLE), "--output_dir", str(output_dir), *TINY_BUDGET]
    command += ["--push_to_hub", "--hub_model_id", repo_id]
    run_in_fresh_process(loopback_hub, command, tmp_path / "home")

    files = loopback_hub.files(repo_id)
    assert sorted(files) == [
        ".gitattributes",
        "README.md",
        "all_results.json",
        "config.json",
        "model.safetensors",
        CARD_DATA_FILE,
        TRAINING_CURVES_FILE,
    ]  # not the teacher, trainer_state.json or any pickle
    for name in ("model.safetensors", "README.md", TRAINING_CURVES_FILE):
        assert files[name].content == (output_dir / name).read_bytes(), name

    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    job = {"folder": str(output_dir), "repo_id": repo_id, "timm": True, "push": False}
    [(logits, report)] = push_and_pull_in_fresh_process(
        loopback_hub, [job], pixels, tmp_path / "pull"
    )
    assert_same_logits(logits["timm"], logits["transformers"])
    local = load_classifier(str(output_dir)).eval()
    with torch.no_grad():
        assert_same_logits(logits["transformers"], local(pixel_values=pixels).logits)
    assert report["preprocessing"]["image_size"] == [32, 32]

    results = json.loads((output_dir / "all_results.json").read_text())
    [result] = report["eval_results"]
    assert (result["task_type"], result["metric_type"]) == ("image-classification", "accuracy")
    assert (result["dataset_name"], result["dataset_split"]) == ("digits", "test")
    assert result["metric_value"] == round(results["eval_accuracy"], 4)
    card = ModelCard(files["README.md"].content.decode())
    assert metadata_errors(str(card)) == []
    assert card.data.library_name == "timm"
    assert {"knowledge-distillation", "mcld"} <= set(card.data.tags)
    assert card.data.model_name == "vit-digits-mcld"
    assert f'timm.create_model("hf-hub:{repo_id}", pretrained=True)' in card.text
    assert "![Training curves](training_curves.png)" in card.text
    stored = json.loads(files[CARD_DATA_FILE].content)
    assert stored["student"]["parameters"] == count_parameters(local)
    assert stored["teacher"]["name"] == "resnet10t"
    assert stored["teacher_eval_accuracy"] == pytest.approx(results["teacher_eval_accuracy"])
    assert stored["speed"]["batch_size"] == 32
    assert stored["training"]["world_size"] == 1


@pytest.mark.slow
def test_mid_training_pushes_upload_only_the_student_and_its_card(loopback_hub, tmp_path):
    """With --save_strategy epoch and --hub_strategy every_save the Trainer pushes at every
    checkpoint: each of those commits holds the checkpoint's student and a card, and no
    commit ever uploads training_args.bin or any other pickle. Over a slow link, so an
    upload is still in flight when the next checkpoint is written: the commits still come
    in checkpoint order, each with its own checkpoint's weights."""
    loopback_hub.preupload_delay_s = 2.0
    repo_id = f"{loopback_hub.user}/vit-digits-every-save"
    output_dir = tmp_path / "run"
    command = [sys.executable, str(EXAMPLE), "--output_dir", str(output_dir), *TINY_BUDGET]
    command += ["--num_train_epochs", "2", "--save_strategy", "epoch"]
    command += ["--push_to_hub", "--hub_model_id", repo_id, "--hub_strategy", "every_save"]
    command += ["--hub_always_push"]  # push at epoch 2 even if epoch 1 is still uploading
    run_in_fresh_process(loopback_hub, command, tmp_path / "home")

    commits = loopback_hub.repos[repo_id].commits
    in_progress = [commit for commit in commits if commit.title.startswith("Training in")]
    assert [commit.title for commit in in_progress] == [
        "Training in progress, epoch 1",
        "Training in progress, epoch 2",
    ]
    for commit in commits:
        pickles = [name for name in commit.files if name.endswith((".bin", ".pt", ".pth"))]
        assert pickles == [], (commit.title, pickles)
    first, second = (commit.files for commit in in_progress)
    assert {"config.json", "model.safetensors", "README.md", CARD_DATA_FILE} <= set(first)
    for files, step in ((first, 3), (second, 6)):  # 96 images, batch 32: 3 steps an epoch
        checkpoint = output_dir / f"checkpoint-{step}" / "model.safetensors"
        assert files["model.safetensors"].content == checkpoint.read_bytes(), step
    final = loopback_hub.files(repo_id)
    assert final["model.safetensors"].content == (output_dir / "model.safetensors").read_bytes()


def test_help_documents_every_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example(monkeypatch)
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


def test_later_flags_override_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example(monkeypatch)
    _, data_args, training_args = example.parse_arguments(
        ["--output_dir", "elsewhere", "--num_train_epochs", "2", "--dataset_name", "cifar"]
    )
    assert training_args.output_dir == "elsewhere"
    assert training_args.num_train_epochs == 2
    assert data_args.dataset_name == "cifar"
    assert training_args.distillation_method == "mcld"
    assert training_args.remove_unused_columns is False


@pytest.mark.slow
def test_streaming_trains_from_a_local_parquet_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datasets import Dataset
    from distill_helpers import write_streaming_parquet

    from hf_kd.hub import save_student
    from hf_kd.preprocessing import ImagePreprocessing

    folder = write_streaming_parquet(tmp_path / "stream", num_files=2, rows_per_file=24)
    validation = Dataset.from_parquet(str(folder / "train-00001-of-00002.parquet"))
    validation.to_parquet(str(folder / "validation-00000-of-00001.parquet"))
    names = {index: f"class_{index}" for index in range(3)}
    teacher = load_classifier("test_resnet", id2label=names, pretrained=False)
    save_student(teacher, tmp_path / "teacher", image_processor=ImagePreprocessing((32, 32)))
    example = load_example(monkeypatch)
    argv = [
        "--output_dir", str(tmp_path / "run"), "--dataset_name", str(folder), "--streaming",
        "--eval_split", "validation", "--max_steps", "4", "--eval_strategy", "no",
        "--teacher_model_name_or_path", str(tmp_path / "teacher"),
        "--student_model_kwargs",
        '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}',
        "--per_device_train_batch_size", "8", "--max_eval_samples", "16",
        "--disable_tqdm", "true", "--logging_steps", "2",
    ]  # fmt: skip
    metrics = example.main(argv)
    assert metrics["train_samples_per_second"] > 0 and 0.0 <= metrics["eval_accuracy"] <= 1.0
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    with pytest.raises(ValueError, match="--streaming needs --eval_split"):
        example.main([*argv[:5], "--max_steps", "1"])
