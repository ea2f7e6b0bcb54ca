"""Model cards of distilled students: metadata the Hub parses, and a body stating every fact."""

from __future__ import annotations

import dataclasses
import json
from importlib import metadata

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import TrainingArguments

from hf_kd.citations import BIBTEX, METHODS, method_info
from hf_kd.losses import available_losses
from hf_kd.model_card import (
    ModelSummary,
    StudentCard,
    TrainingSetup,
    card_metadata,
    framework_versions,
    render_model_card,
    write_card_with_transfer_result,
    write_model_card,
)
from hf_kd.models import count_parameters, load_classifier
from hf_kd.plots import training_curves
from hf_kd.speed import InferenceSpeed, measure_inference_speed
from hf_kd.transfer import LinearProbeConfig, TransferResult
from tests.hub_metadata import metadata_errors

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def transfer_result(dataset="tanganke/stl10", name="STL-10", accuracy=0.5125) -> TransferResult:
    return TransferResult(
        dataset=dataset,
        display_name=name,
        eval_split="test",
        top1_accuracy=accuracy,
        num_classes=10,
        num_train_samples=5000,
        num_eval_samples=8000,
        feature_dim=192,
        image_size=(32, 32),
        probe=LinearProbeConfig(epochs=12),
    )


def make_card(method: str = "dkd", **changes) -> StudentCard:
    card = StudentCard(
        model_name="resnet8-dkd-cifar100",
        student=ModelSummary("resnet8x4", 1_234_567, "timm"),
        teacher=ModelSummary("timm/resnet50.a1_in1k", 25_557_032, "timm"),
        method=method,
        training=TrainingSetup(
            dataset="uoft-cs/cifar100",
            global_batch_size=128,
            world_size=2,
            epochs=240.0,
            precision="bf16",
            seed=1234,
            hyperparameters={"learning_rate": 0.05, "optim": "sgd", "weight_decay": 0.0005},
        ),
        loss_hyperparameters={"temperature": 4.0, "alpha": 1.0, "beta": 8.0},
        ce_weight=1.0,
        kd_weight=1.0,
        warmup_epochs=20.0,
        eval_accuracy=0.6875,
        eval_top5_accuracy=0.9,
        speed=InferenceSpeed(40.0, 10.0, batch_size=32, device="cpu", num_threads=2),
        repo_id="someone/resnet8-dkd",
    )
    return dataclasses.replace(card, **changes)


def test_metadata_and_model_index_parse_with_huggingface_hub():
    card = make_card(transfer_results=[transfer_result()])
    text = render_model_card(card)
    parsed = ModelCard(text).data
    assert parsed.library_name == "timm"
    assert parsed.pipeline_tag == "image-classification"
    assert {"knowledge-distillation", "dkd", "timm", "transformers"} <= set(parsed.tags)
    assert parsed.datasets == ["uoft-cs/cifar100"]
    assert parsed.base_model is None  # the student was trained from scratch: not the teacher
    assert parsed.license == "apache-2.0"
    student, transfer = parsed.eval_results
    assert (student.task_type, student.metric_type, student.metric_value) == (
        "image-classification",
        "accuracy",
        0.6875,
    )
    assert (student.dataset_type, student.dataset_split) == ("uoft-cs/cifar100", "test")
    assert (transfer.dataset_type, transfer.dataset_name, transfer.metric_value) == (
        "tanganke/stl10",
        "STL-10",
        0.5125,
    )
    assert parsed.to_dict()["model-index"][0]["name"] == "resnet8-dkd-cifar100"
    assert metadata_errors(text) == []


def test_local_dataset_and_teacher_paths_are_not_claimed_as_hub_ids(tmp_path):
    (tmp_path / "digits").mkdir()
    (tmp_path / "teacher").mkdir()
    card = make_card(
        training=dataclasses.replace(make_card().training, dataset=str(tmp_path / "digits")),
        teacher=ModelSummary(str(tmp_path / "teacher"), 2_000_000, "timm"),
    )
    metadata = card_metadata(card)
    assert metadata.datasets is None and metadata.base_model is None
    [result] = metadata.eval_results
    assert result.dataset_type == "digits"


def test_body_states_sizes_speedup_method_and_setup():
    text = render_model_card(make_card())
    assert "`resnet8x4` (1.23M parameters)" in text
    assert "`timm/resnet50.a1_in1k` (25.56M parameters)" in text
    assert "| Student | `resnet8x4` | 1.23M (1,234,567) | timm |" in text
    assert "20.7x fewer parameters" in text  # 25,557,032 / 1,234,567
    assert "speed-up: **4.00x**" in text
    assert "| Student (top-1) | `uoft-cs/cifar100` | test | 68.75% |" in text
    assert "**DKD** (`dkd`)" in text
    for row in (
        "| global batch size | `128` |",
        "| world size (processes) | `2` |",
        "| epochs trained | `240.0` |",
        "| precision | `bf16` |",
        "| seed | `1234` |",
        "| `learning_rate` | `0.05` |",
        "| `optim` | `sgd` |",
        "| `weight_decay` | `0.0005` |",
        "| `temperature` | `4.0` |",
        "| `alpha` | `1.0` |",
        "| `beta` | `8.0` |",
        "| `warmup_epochs` | `20.0` |",
        "| `logit_standardization` | `false` |",
    ):
        assert row in text, row


EXPECTED_CITATIONS = {
    "kd": ["hinton2015distilling"],
    "dkd": ["zhao2022decoupled"],
    "normkd": ["chi2023normkd"],
    "normkd_dkd": ["chi2023normkd", "zhao2022decoupled"],
    "rld": ["sun2024refined"],
    "mcld": ["wang2024multi"],
    "hard": ["touvron2021training"],
}


@pytest.mark.parametrize("method", sorted(EXPECTED_CITATIONS))
@pytest.mark.parametrize("logit_standardization", [False, True])
def test_card_cites_the_method_and_logit_standardization_when_used(method, logit_standardization):
    text = render_model_card(make_card(method, logit_standardization=logit_standardization))
    cited = [key for key in BIBTEX if f"{{{key}," in text]
    expected = EXPECTED_CITATIONS[method] + (["sun2024logit"] if logit_standardization else [])
    assert sorted(cited) == sorted(expected)
    assert ("logit-standardization" in ModelCard(text).data.tags) == logit_standardization


def test_every_registered_loss_has_a_citation():
    assert set(EXPECTED_CITATIONS) <= set(METHODS)
    for loss in available_losses():
        assert method_info(loss).citation_keys, f"no citation registered for loss {loss!r}"


def test_mcld_card_says_the_method_is_reconstructed():
    assert "MCLD is reconstructed" in render_model_card(make_card("mcld"))
    assert "reconstructed" not in render_model_card(make_card("dkd"))


def test_timm_usage_snippet_only_for_timm_students():
    timm_text = render_model_card(make_card())
    assert 'timm.create_model("hf-hub:someone/resnet8-dkd", pretrained=True)' in timm_text
    assert 'AutoModelForImageClassification.from_pretrained("someone/resnet8-dkd")' in timm_text
    vit = ModelSummary("vit-tiny", 5_000_000, "transformers")
    vit_text = render_model_card(make_card(student=vit))
    assert "timm.create_model" not in vit_text
    assert 'AutoModelForImageClassification.from_pretrained("someone/resnet8-dkd")' in vit_text
    assert ModelCard(vit_text).data.library_name == "transformers"


LOG_HISTORY = [
    {"loss": 2.0, "ce_loss": 1.5, "kd_loss": 0.5, "learning_rate": 0.1, "grad_norm": 3.0,
     "epoch": 0.5, "step": 10},
    {"eval_loss": 1.4, "eval_accuracy": 0.5, "eval_top5_accuracy": 0.8, "eval_runtime": 1.0,
     "epoch": 1.0, "step": 20},
    {"loss": 1.0, "ce_loss": 0.75, "kd_loss": 0.25, "learning_rate": 0.05, "grad_norm": 2.0,
     "epoch": 1.5, "step": 30},
    {"eval_loss": 1.2, "eval_accuracy": 0.625, "eval_top5_accuracy": 0.875, "eval_runtime": 1.0,
     "epoch": 2.0, "step": 40},
    {"train_runtime": 12.0, "train_loss": 1.5, "epoch": 2.0, "step": 40},
]  # fmt: skip


def test_training_curves_split_losses_from_accuracies():
    losses, accuracies = training_curves(LOG_HISTORY)
    assert losses == {
        "loss": [(10, 2.0), (30, 1.0)],
        "ce_loss": [(10, 1.5), (30, 0.75)],
        "kd_loss": [(10, 0.5), (30, 0.25)],
        "eval_loss (validation)": [(20, 1.4), (40, 1.2)],
    }
    assert accuracies == {
        "eval_accuracy (validation)": [(20, 0.5), (40, 0.625)],
        "eval_top5_accuracy (validation)": [(20, 0.8), (40, 0.875)],
    }


def test_training_curves_name_the_split_of_each_evaluation():
    """The example evaluates the validation split during training, then the test split: the
    test point is its own curve, not the validation curve's last point."""
    test_evaluation = {"eval_loss": 1.3, "eval_accuracy": 0.6, "eval_runtime": 1.0, "step": 40}
    losses, accuracies = training_curves([*LOG_HISTORY, test_evaluation], final_eval_split="test")
    assert losses["eval_loss (validation)"] == [(20, 1.4), (40, 1.2)]
    assert losses["eval_loss (test)"] == [(40, 1.3)]
    assert accuracies["eval_accuracy (validation)"] == [(20, 0.5), (40, 0.625)]
    assert accuracies["eval_accuracy (test)"] == [(40, 0.6)]
    text = render_model_card(make_card(training_curves="training_curves.png"))
    assert "the validation split during training, the test split after it" in text


def test_training_curves_of_a_run_that_evaluates_the_test_split_during_training():
    """A run whose eval_dataset is the test split (no validation split): every evaluation is
    labelled test, and the card says so."""
    losses, accuracies = training_curves(LOG_HISTORY, "test", training_eval_split="test")
    assert losses["eval_loss (test)"] == [(20, 1.4), (40, 1.2)]
    assert not any("validation" in name for name in [*losses, *accuracies])
    card = make_card(training_curves="training_curves.png", training_eval_split="test")
    text = render_model_card(card)
    assert "split: the test split." in text and "validation split" not in text


def test_write_model_card_writes_the_plot_and_card_data(tmp_path):
    written = write_model_card(make_card(), tmp_path, log_history=LOG_HISTORY)
    assert written.training_curves == "training_curves.png"
    png = (tmp_path / "training_curves.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    readme = (tmp_path / "README.md").read_text()
    assert "![Training curves](training_curves.png)" in readme
    stored = json.loads((tmp_path / "student_card.json").read_text())
    assert StudentCard.from_dict(stored) == written

    without_log = write_model_card(make_card(), tmp_path / "no_log")
    assert without_log.training_curves is None
    assert not (tmp_path / "no_log" / "training_curves.png").exists()
    assert "Training curves" not in (tmp_path / "no_log" / "README.md").read_text()


def test_transfer_results_re_render_the_card_one_entry_per_dataset(tmp_path):
    model_dir, output_dir = tmp_path / "student", tmp_path / "transfer"
    write_model_card(make_card(), model_dir, log_history=LOG_HISTORY)
    written = write_card_with_transfer_result(model_dir, transfer_result(accuracy=0.4), output_dir)
    assert sorted(written) == ["README.md", "student_card.json", "training_curves.png"]
    write_card_with_transfer_result(output_dir, transfer_result(accuracy=0.45), output_dir)
    tiny = transfer_result("zh-plus/tiny-imagenet", "Tiny-ImageNet", accuracy=0.3)
    write_card_with_transfer_result(output_dir, tiny, output_dir)

    card = ModelCard.load(output_dir / "README.md")
    values = {result.dataset_type: result.metric_value for result in card.data.eval_results}
    assert values == {
        "uoft-cs/cifar100": 0.6875,
        "tanganke/stl10": 0.45,
        "zh-plus/tiny-imagenet": 0.3,
    }
    assert "| STL-10 (`tanganke/stl10`, test) | 10 | 5000 / 8000 | 32x32 | 192 | 45.00% |" in (
        card.text
    )
    assert "12 epochs" in card.text


def test_transfer_result_joins_the_model_index_of_a_foreign_card(tmp_path):
    (tmp_path / "README.md").write_text(
        "---\nlicense: mit\nlibrary_name: timm\n---\n# Someone's model\n"
    )
    write_card_with_transfer_result(tmp_path, transfer_result(), tmp_path / "out")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.license == "mit"
    [result] = card.data.eval_results
    assert (result.dataset_type, result.metric_value) == ("tanganke/stl10", 0.5125)
    assert "# Someone's model" in card.text


def test_provenance_base_model_is_the_students_initialisation_never_the_teacher():
    from_scratch = render_model_card(make_card())
    assert ModelCard(from_scratch).data.base_model is None
    assert "the student was trained from scratch (random initialisation)" in from_scratch
    assert "distilled from the teacher\n`timm/resnet50.a1_in1k`" in from_scratch
    student = dataclasses.replace(
        make_card().student, initialisation="timm/resnet18.a1_in1k", name="resnet18"
    )
    fine_tuned = render_model_card(make_card(student=student))
    assert ModelCard(fine_tuned).data.base_model == "timm/resnet18.a1_in1k"
    assert "starting from the weights of `timm/resnet18.a1_in1k`" in fine_tuned
    local = dataclasses.replace(student, initialisation="/data/pretrained-resnet18")
    assert ModelCard(render_model_card(make_card(student=local))).data.base_model is None


def test_card_states_split_sizes_and_framework_versions(tmp_path):
    training = dataclasses.replace(
        make_card().training, split_sizes={"train": 1437, "validation": 144, "test": 216}
    )
    card = make_card(training=training, framework_versions=framework_versions())
    text = render_model_card(card)
    assert "| images per split | `train 1437 / validation 144 / test 216` |" in text
    for name in ("hf-kd", "torch", "transformers", "timm", "datasets", "accelerate"):
        assert f"- {name} {metadata.version(name)}\n" in text
    written = write_model_card(card, tmp_path)
    assert StudentCard.from_dict(json.loads((tmp_path / "student_card.json").read_text())) == (
        written
    )


def test_usage_snippets_load_the_local_folder_until_pushed(tmp_path):
    local = write_model_card(make_card(repo_id=None), tmp_path / "student")
    text = (tmp_path / "student" / "README.md").read_text()
    assert local.local_dir == str(tmp_path / "student")
    assert f'timm.create_model("local-dir:{tmp_path / "student"}", pretrained=True)' in text
    assert f'from_pretrained("{tmp_path / "student"}")' in text
    assert "hf-hub:" not in text
    pushed = render_model_card(dataclasses.replace(local, repo_id="someone/resnet8-dkd"))
    assert 'timm.create_model("hf-hub:someone/resnet8-dkd", pretrained=True)' in pushed


def test_training_setup_from_training_arguments(tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=3,
        num_train_epochs=2,
        seed=5,
        bf16=True,
        use_cpu=True,
        learning_rate=1e-3,
        report_to="none",
    )
    setup = TrainingSetup.from_training_args(args, "uoft-cs/cifar100", epochs=1.5, steps=30)
    # what was trained, not what was planned (num_train_epochs, among the hyperparameters)
    assert (setup.global_batch_size, setup.world_size, setup.epochs, setup.steps) == (
        24,
        1,
        1.5,
        30,
    )
    assert setup.hyperparameters["num_train_epochs"] == 2.0
    assert "max_steps" not in setup.hyperparameters
    assert (setup.precision, setup.seed, setup.dataset) == ("bf16", 5, "uoft-cs/cifar100")
    assert setup.hyperparameters["learning_rate"] == 1e-3
    assert setup.hyperparameters["gradient_accumulation_steps"] == 3
    assert isinstance(setup.hyperparameters["optim"], str)
    assert isinstance(setup.hyperparameters["lr_scheduler_type"], str)
    json.dumps(dataclasses.asdict(setup))  # the card data must be JSON
    capped = TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, num_train_epochs=20, report_to="none"
    )
    setup = TrainingSetup.from_training_args(capped, "digits", epochs=6 / 11, steps=6)
    assert (setup.epochs, setup.steps, setup.hyperparameters["max_steps"]) == (0.5455, 6, 6)
    assert "num_train_epochs" not in setup.hyperparameters
    assert "| epochs trained | `0.55` |" in render_model_card(make_card(training=setup))
    assert "| optimizer steps | `6` |" in render_model_card(make_card(training=setup))


def test_a_student_built_with_changed_arguments_is_described_as_built():
    timm_student = load_classifier(
        "vit_tiny_patch16_224",
        num_labels=10,
        pretrained=False,
        model_kwargs={"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 4},
    )
    summary = ModelSummary.of(timm_student, "vit_tiny_patch16_224")
    assert summary.name == (
        "vit_tiny_patch16_224 with img_size=32, patch_size=8, embed_dim=96, depth=4"
    )
    assert (summary.architecture, summary.library) == ("vit_tiny_patch16_224", "timm")
    assert summary.model_args == {"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 4}
    assert summary.parameters == count_parameters(timm_student)
    text = render_model_card(make_card(student=summary))
    assert f"`{summary.name}` ({summary.parameters / 1e6:.2f}M parameters)" in text
    # a name that is not the architecture keeps it, with the architecture as built
    named = ModelSummary.of(timm_student, "outputs/student")
    assert (
        named.name
        == f"outputs/student (vit_tiny_patch16_224 with {summary.name.split(' with ')[1]})"
    )
    assert ModelSummary.of(load_classifier("resnet10t", num_labels=3, pretrained=False)).name == (
        "resnet10t"
    )

    hf_student = load_classifier(
        "vit",
        num_labels=3,
        pretrained=False,
        model_kwargs={"hidden_size": 48, "num_hidden_layers": 2},
    )
    summary = ModelSummary.of(hf_student)
    assert (summary.architecture, summary.library) == ("vit", "transformers")
    assert summary.model_args == {"hidden_size": 48, "num_hidden_layers": 2}
    assert summary.name == "vit with hidden_size=48, num_hidden_layers=2"


class TinyClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 4)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.linear(pixel_values)


def test_speed_measurement():
    assert InferenceSpeed(30.0, 10.0, 8, "cpu", 1).speedup == 3.0
    teacher, student = TinyClassifier(), TinyClassifier()
    speed = measure_inference_speed(teacher, student, torch.randn(8, 3), repeats=3, warmup=1)
    assert (speed.batch_size, speed.device) == (8, "cpu")
    assert speed.teacher_latency_ms > 0 and speed.student_latency_ms > 0
    assert teacher.training and student.training  # the models' mode is restored
