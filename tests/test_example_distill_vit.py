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
import timm
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from timm.models.deit import VisionTransformerDistilled
from transformers import AutoModelForImageClassification, DeiTForImageClassificationWithTeacher

from hf_kd.distillation_token import has_distillation_token
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

    # The teacher folder loads the way a card says (timm local-dir), claiming no ImageNet
    # weights: it was trained from scratch here, as was the student, which the card says.
    teacher = timm.create_model(f"local-dir:{teacher_dir}", pretrained=True).eval()
    reference = load_classifier(str(teacher_dir)).eval()
    with torch.no_grad():
        torch.testing.assert_close(teacher(pixels), reference(pixel_values=pixels).logits)
    for folder in (teacher_dir, output_dir):
        pretrained_cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
        assert not {"tag", "hf_hub_id", "license"} & set(pretrained_cfg), folder
    card = json.loads((output_dir / CARD_DATA_FILE).read_text())
    assert card["student"]["initialisation"] is None
    assert card["teacher"]["name"] == "resnet10t"
    assert card["training"]["split_sizes"] == {"train": 96, "validation": 64, "test": 64}
    readme = (output_dir / "README.md").read_text()
    assert "the student was trained from scratch" in readme
    assert ModelCard(readme).data.base_model is None
    assert f'timm.create_model("local-dir:{output_dir}", pretrained=True)' in readme

    # A second run reuses the teacher instead of training a new one.
    teacher_weights = teacher_dir / "model.safetensors"
    modified = os.stat(teacher_weights).st_mtime_ns
    monkeypatch.setattr(sys, "argv", [*argv, "--distillation_method", "kd"])
    second = example.main()
    assert os.stat(teacher_weights).st_mtime_ns == modified
    assert second["teacher_eval_accuracy"] == pytest.approx(results["teacher_eval_accuracy"])


# students with a distillation token: timm's distilled DeiT by name, transformers' DeiT with
# teacher as the model type "deit" whose config names that class
TOKEN_STUDENTS = {
    "timm": [
        "--student_model_name_or_path", "deit_tiny_distilled_patch16_224",
        "--student_model_kwargs",
        '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}',
    ],
    "transformers": [
        "--student_model_name_or_path", "deit",
        "--student_model_kwargs",
        '{"architectures": ["DeiTForImageClassificationWithTeacher"], "image_size": 32, '
        '"patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, '
        '"intermediate_size": 64}',
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("library", sorted(TOKEN_STUDENTS))
def test_distillation_token_students_train_and_reload_with_both_heads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, library: str
) -> None:
    example = load_example(monkeypatch)
    output_dir = tmp_path / "run"
    argv = ["distill_vit.py", "--output_dir", str(output_dir), *TINY_BUDGET]
    monkeypatch.setattr(sys, "argv", [*argv, *TOKEN_STUDENTS[library]])
    metrics = example.main()
    for key in ("eval_accuracy", "eval_cls_accuracy", "eval_distillation_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    logs = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert any("kd_loss/instance" in log for log in logs)  # the token learns the default MCLD

    student = load_classifier(str(output_dir)).eval()
    assert has_distillation_token(student)
    trained = load_file(output_dir / "model.safetensors")
    if library == "timm":
        via_timm = timm.create_model(f"local-dir:{output_dir}", pretrained=True)
        assert isinstance(via_timm, VisionTransformerDistilled)
        heads = via_timm.state_dict()
        for key in ("head.weight", "head_dist.weight"):
            torch.testing.assert_close(heads[key], trained[key], rtol=0, atol=0)  # timm layout
    else:
        assert isinstance(student, DeiTForImageClassificationWithTeacher)
        for key in ("cls_classifier.weight", "distillation_classifier.weight"):
            torch.testing.assert_close(student.state_dict()[key], trained[key], rtol=0, atol=0)
    card = json.loads((output_dir / CARD_DATA_FILE).read_text())
    assert card["distillation_token"] is True
    assert card["eval_distillation_accuracy"] == metrics["eval_distillation_accuracy"]


@pytest.mark.slow
def test_default_story_pushed_to_the_hub_reloads_with_both_libraries(loopback_hub, tmp_path):
    """The default story as a script with --push_to_hub: the student, its card and curves
    reach the Hub in one commit; a fresh process loads it with transformers and with timm
    and reads the test accuracy back from the card's model-index."""
    repo_id = f"{loopback_hub.user}/vit-digits-mcld"
    output_dir = tmp_path / "run"
    command = [sys.executable, str(EXAMPLE), "--output_dir", str(output_dir), *TINY_BUDGET]
    command += ["--push_to_hub", "--hub_model_id", repo_id, "--max_steps", "2"]
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
    # the student as built, and what was trained: 2 steps of 32 of 96 images, not 1 epoch
    student_args = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    assert stored["student"]["name"] == (
        "vit_tiny_patch16_224 with img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2"
    )
    assert stored["student"]["architecture"] == "vit_tiny_patch16_224"
    assert stored["student"]["model_args"] == student_args
    assert (stored["training"]["epochs"], stored["training"]["steps"]) == (0.6667, 2)
    assert f"`{stored['student']['name']}` (" in card.text
    assert "| epochs trained | `0.67` |" in card.text
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


@pytest.mark.parametrize("model", ["teacher", "student"])
def test_a_missing_model_folder_fails_before_training(
    model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example(monkeypatch)
    missing = tmp_path / "no" / "such" / "folder"
    argv = ["--output_dir", str(tmp_path / "run"), *TINY_BUDGET]
    with pytest.raises(FileNotFoundError) as error:
        example.main([*argv, f"--{model}_model_name_or_path", str(missing)])
    assert f"the local folder {missing} does not exist" in str(error.value)
    assert "not a valid Hub model id either" in str(error.value)
    assert not (tmp_path / "run" / "teacher").exists()  # no teacher was trained first


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
