"""Student export and Hub publishing: local loads with both libraries, then a real push and
pull over HTTP against the loopback Hub server (tests/hub_server.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_kd.hub import push_student_to_hub, push_students_to_hub, save_student
from hf_kd.model_card import ModelSummary, StudentCard, TrainingSetup, write_model_card
from hf_kd.models import preprocessing_for
from hf_kd.preprocessing import ImagePreprocessing
from tests.hub_client import (
    assert_same_logits,
    push_and_pull_in_fresh_process,
    run_in_fresh_process,
)
from tests.hub_metadata import metadata_errors

pytest_plugins = ("tests.hub_server",)  # the loopback_hub fixture

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS = {0: "cat", 1: "dog", 2: "bird", 3: "fish", 4: "frog"}
PREPROCESSING = ImagePreprocessing(
    image_size=(32, 32), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), interpolation="bilinear"
)


def tiny_timm_student(
    architecture: str = "test_resnet", **model_args
) -> TimmWrapperForImageClassification:
    torch.manual_seed(0)
    config = TimmWrapperConfig(
        architecture=architecture,
        num_labels=len(LABELS),
        id2label=LABELS,
        label2id={name: index for index, name in LABELS.items()},
        model_args=model_args or None,
    )
    model = TimmWrapperForImageClassification(config).eval()
    with torch.no_grad():  # non-default BN statistics, so that a lost buffer changes logits
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def tiny_vit_student() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(LABELS),
        id2label=LABELS,
        label2id={name: index for index, name in LABELS.items()},
    )
    return ViTForImageClassification(config).eval()


def pixel_batch() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def assert_same_weights(model: torch.nn.Module, timm_module: torch.nn.Module) -> None:
    """A wrapped timm model's weights and buffers equal those of a plain timm module."""
    expected = {name.removeprefix("timm_model."): t for name, t in model.state_dict().items()}
    loaded = timm_module.state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in loaded.items():
        assert torch.equal(tensor, expected[name]), name


def student_card(model: torch.nn.Module, name: str, repo_id: str | None) -> StudentCard:
    return StudentCard(
        model_name=name,
        student=ModelSummary.of(model, name),
        teacher=ModelSummary("timm/resnet50.a1_in1k", 25_557_032, "timm"),
        method="dkd",
        training=TrainingSetup("uoft-cs/cifar100", 128, 2, 3.0, "bf16", 42),
        loss_hyperparameters={"temperature": 4.0, "alpha": 1.0, "beta": 8.0},
        warmup_epochs=20,
        eval_accuracy=0.6875,
        repo_id=repo_id,
    )


# -- local export ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "model_args"), [("test_resnet", {}), ("test_vit", {"img_size": 32})]
)
def test_timm_student_export_loads_with_transformers_and_timm_identically(
    tmp_path, architecture, model_args
):
    model = tiny_timm_student(architecture, **model_args)
    save_student(model, tmp_path, image_processor=PREPROCESSING)
    inputs = pixel_batch()
    with torch.no_grad():
        reference = model(pixel_values=inputs).logits
        via_transformers = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
        via_timm = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
        assert_same_logits(via_transformers(pixel_values=inputs).logits, reference)
        assert_same_logits(via_timm(inputs), reference)
    assert_same_weights(model, via_transformers.timm_model)
    assert_same_weights(model, via_timm)

    config = json.loads((tmp_path / "config.json").read_text())
    assert "num_classes" not in config["model_args"]
    assert config["num_classes"] == len(LABELS)
    assert config["architectures"] == ["TimmWrapperForImageClassification"]
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        assert not any(key.startswith("timm_model.") for key in weights.keys())
    assert via_transformers.config.id2label == LABELS
    # the preprocessing lives in pretrained_cfg, read by timm and by TimmWrapperImageProcessor
    assert preprocessing_for(via_transformers) == PREPROCESSING
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert preprocessing_for(via_transformers, processor) == PREPROCESSING
    assert timm.data.resolve_data_config(model=via_timm)["input_size"] == (3, 32, 32)


def test_timm_student_reloaded_by_transformers_re_exports_its_preprocessing(tmp_path):
    model = tiny_timm_student("test_vit", img_size=32)
    save_student(model, tmp_path / "first", image_processor=PREPROCESSING)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "first").eval()
    save_student(reloaded, tmp_path / "second")
    inputs = pixel_batch()
    with torch.no_grad():
        via_timm = timm.create_model(f"local-dir:{tmp_path / 'second'}", pretrained=True).eval()
        assert_same_logits(via_timm(inputs), model(pixel_values=inputs).logits)
    second = AutoModelForImageClassification.from_pretrained(tmp_path / "second")
    assert preprocessing_for(second) == PREPROCESSING
    # the processor transformers builds for a timm repo carries timm's full data config
    processor = AutoImageProcessor.from_pretrained(tmp_path / "second")
    save_student(second, tmp_path / "third", image_processor=processor)
    third = json.loads((tmp_path / "third" / "config.json").read_text())["pretrained_cfg"]
    first = json.loads((tmp_path / "first" / "config.json").read_text())["pretrained_cfg"]
    for key in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode"):
        assert third[key] == first[key], key


def test_transformers_student_export_writes_its_image_processor(tmp_path):
    model = tiny_vit_student()
    save_student(model, tmp_path, image_processor=PREPROCESSING)
    assert (tmp_path / "preprocessor_config.json").is_file()
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    inputs = pixel_batch()
    with torch.no_grad():
        assert_same_logits(reloaded(pixel_values=inputs).logits, model(pixel_values=inputs).logits)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert preprocessing_for(reloaded, processor) == PREPROCESSING


@pytest.mark.parametrize("make_model", [tiny_timm_student, tiny_vit_student], ids=["timm", "vit"])
def test_a_gathered_state_dict_replaces_the_model_weights(tmp_path, make_model):
    """What the Trainer passes under FSDP/DeepSpeed: the weights saved are the state dict's."""
    model = make_model()
    with torch.no_grad():
        gathered = {name: tensor + 1 for name, tensor in model.state_dict().items()}
    save_student(model, tmp_path, image_processor=PREPROCESSING, state_dict=gathered)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path)
    loaded = reloaded.state_dict()
    assert loaded.keys() == gathered.keys()
    for name, tensor in gathered.items():
        assert torch.equal(loaded[name], tensor), name


def test_push_refuses_a_folder_without_a_saved_student(tmp_path):
    with pytest.raises(ValueError, match="save_student"):
        push_student_to_hub(tmp_path, "someone/empty")


# -- push and pull over HTTP -----------------------------------------------------------------

TIMM_REPO = "hf-kd-tester/test-resnet-dkd"
VIT_REPO = "hf-kd-tester/vit-tiny-dkd"
LOG_HISTORY = [
    {
        "loss": 1.5,
        "ce_loss": 1.0,
        "kd_loss": 0.5,
        "tckd": 0.2,
        "nckd": 0.3,
        "epoch": 0.5,
        "step": 5,
    },
    {"eval_loss": 1.1, "eval_accuracy": 0.6875, "epoch": 1.0, "step": 10},
]


@pytest.fixture(scope="module")
def pushed_students(loopback_hub, tmp_path_factory):
    """A timm and a transformers student, saved with cards, pushed and pulled in one process."""
    work = tmp_path_factory.mktemp("round_trip")
    students = {TIMM_REPO: tiny_timm_student(), VIT_REPO: tiny_vit_student()}
    jobs = []
    for repo_id, model in students.items():
        folder = work / repo_id.split("/")[1]
        save_student(model, folder, image_processor=PREPROCESSING)
        # the ViT card names no repo yet: pushing points its usage snippets at the repo
        card = student_card(model, repo_id.split("/")[1], repo_id if repo_id == TIMM_REPO else None)
        write_model_card(card, folder, log_history=LOG_HISTORY)
        (folder / "checkpoint-10").mkdir()
        (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"not for the hub")
        jobs.append(
            {
                "folder": str(folder),
                "repo_id": repo_id,
                "timm": repo_id == TIMM_REPO,
                "private": True,
            }
        )
    results = push_and_pull_in_fresh_process(loopback_hub, jobs, pixel_batch(), work)
    pulled = {
        job["repo_id"]: (logits, report, job["folder"])
        for job, (logits, report) in zip(jobs, results, strict=True)
    }
    return students, pulled


def test_timm_student_pushed_to_the_hub_reloads_with_both_libraries(loopback_hub, pushed_students):
    students, pulled = pushed_students
    logits, report, folder = pulled[TIMM_REPO]
    with torch.no_grad():
        reference = students[TIMM_REPO](pixel_values=pixel_batch()).logits
    assert_same_logits(logits["transformers"], reference)
    assert_same_logits(logits["timm"], reference)
    expected_files = [
        ".gitattributes",
        "README.md",
        "config.json",
        "model.safetensors",
        "student_card.json",
        "training_curves.png",
    ]
    assert report["files"] == expected_files  # no checkpoint-*/ folder
    stored = loopback_hub.files(TIMM_REPO)
    assert stored["model.safetensors"].is_lfs and stored["training_curves.png"].is_lfs
    assert stored["model.safetensors"].content == (Path(folder) / "model.safetensors").read_bytes()
    assert loopback_hub.repos[TIMM_REPO].private
    assert report["id2label"] == {str(index): name for index, name in LABELS.items()}
    assert tuple(report["preprocessing"]["image_size"]) == PREPROCESSING.image_size


def test_card_read_back_from_the_hub_has_metadata_and_model_index(pushed_students):
    _, pulled = pushed_students
    _, report, _ = pulled[TIMM_REPO]
    card = report["card_data"]
    assert card["library_name"] == "timm"
    assert card["pipeline_tag"] == "image-classification"
    assert {"knowledge-distillation", "dkd", "timm", "transformers"} <= set(card["tags"])
    assert card.get("base_model") is None  # trained from scratch; the teacher is no base
    assert card["datasets"] == ["uoft-cs/cifar100"]
    assert card["license"] == "apache-2.0"
    [result] = report["eval_results"]
    assert (result["metric_type"], result["metric_value"]) == ("accuracy", 0.6875)
    assert (result["dataset_type"], result["dataset_split"]) == ("uoft-cs/cifar100", "test")
    assert f'timm.create_model("hf-hub:{TIMM_REPO}"' in report["card_text"]
    assert "![Training curves](training_curves.png)" in report["card_text"]


def test_transformers_student_pushed_to_the_hub_reloads_with_its_processor(pushed_students):
    students, pulled = pushed_students
    logits, report, _ = pulled[VIT_REPO]
    with torch.no_grad():
        reference = students[VIT_REPO](pixel_values=pixel_batch()).logits
    assert_same_logits(logits["transformers"], reference)
    assert "preprocessor_config.json" in report["files"]
    assert report["preprocessing"] == {
        "image_size": list(PREPROCESSING.image_size),
        "mean": list(PREPROCESSING.mean),
        "std": list(PREPROCESSING.std),
        "interpolation": PREPROCESSING.interpolation,
    }
    assert report["card_data"]["library_name"] == "transformers"
    assert "timm.create_model" not in report["card_text"]
    assert f'AutoModelForImageClassification.from_pretrained("{VIT_REPO}")' in report["card_text"]


def test_transfer_eval_push_adds_the_result_to_the_hub_card(loopback_hub, tmp_path):
    """transfer_eval on a Hub student pushes its card with the result in the model-index."""
    repo_id = "hf-kd-tester/vit-transfer"
    folder = tmp_path / "student"
    model = tiny_vit_student()
    save_student(model, folder, image_processor=PREPROCESSING)
    write_model_card(student_card(model, "vit-transfer", repo_id), folder, log_history=LOG_HISTORY)
    loopback_hub.add_folder(repo_id, folder)
    dataset_dir = tmp_path / "shapes"
    write_tiny_image_dataset(dataset_dir)

    command = [
        sys.executable,
        str(REPO_ROOT / "examples" / "transfer_eval.py"),
        "--model_name_or_path",
        repo_id,
        "--dataset_name",
        str(dataset_dir),
        "--output_dir",
        str(tmp_path / "transfer"),
        "--probe_epochs",
        "5",
        "--push_to_hub",
    ]
    run_in_fresh_process(loopback_hub, command, tmp_path / "home")

    files = loopback_hub.files(repo_id)
    results = json.loads(files["transfer_results.json"].content)["results"]
    [result] = results
    assert (result["dataset"], result["eval_split"], result["num_classes"]) == (
        str(dataset_dir),
        "test",
        3,
    )
    card = ModelCard(files["README.md"].content.decode())
    by_task = {entry.task_name: entry for entry in card.data.eval_results}
    assert by_task["Image Classification"].metric_value == 0.6875
    transfer = by_task["Linear-probe transfer"]
    assert transfer.metric_value == round(result["top1_accuracy"], 4)
    assert transfer.dataset_type == "shapes"
    assert "## Transfer (linear probe)" in card.text
    # the weights were not re-uploaded: the pushed commit only touched the card and results
    assert files["model.safetensors"].content == (folder / "model.safetensors").read_bytes()
    assert json.loads(files["student_card.json"].content)["transfer_results"][0]["dataset"] == (
        str(dataset_dir)
    )


def write_tiny_image_dataset(path: Path) -> None:
    """A 3-class dataset of coloured squares (train 12 / test 6) as local parquet files."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["r", "g", "b"])})
    for split, count in (("train", 12), ("test", 6)):
        labels = [index % 3 for index in range(count)]
        images = [Image.new("RGB", (40, 40), colours[label]) for label in labels]
        dataset = Dataset.from_dict({"image": images, "label": labels}, features=features)
        dataset.to_parquet(path / "data" / f"{split}-00000-of-00001.parquet")


def test_loopback_metadata_validator_rejects_a_malformed_model_index():
    good = (
        "---\nlicense: mit\nmodel-index:\n- name: m\n  results:\n  - task: {type: t}\n"
        "    dataset: {type: d, name: D}\n    metrics: [{type: accuracy, value: 0.5}]\n---\n"
    )
    assert metadata_errors(good) == []
    assert metadata_errors(good.replace("{type: accuracy, value: 0.5}", "{value: 0.5}")) == [
        "each metric needs 'type' and 'value'"
    ]
    assert metadata_errors("---\ntags: [1, 2]\n---\n") == ["'tags' must be a list of strings"]
    assert metadata_errors("---\nkey: [unclosed\n---\n")[0].startswith("invalid YAML")


def test_a_set_with_a_bad_folder_fails_before_anything_is_pushed(tmp_path):
    """push_students_to_hub checks every folder first: an invalid repo name, two folders of
    one name, or a folder without a saved model stop it before the first upload (no Hub is
    reachable here, so reaching the upload would fail differently)."""
    good = tmp_path / "cifar100-16px-cifar_resnet8-kd-seed0"
    save_student(tiny_timm_student(), good, image_processor=PREPROCESSING)
    bad_name = tmp_path / "bad--name"
    save_student(tiny_timm_student(), bad_name, image_processor=PREPROCESSING)
    with pytest.raises(ValueError, match="not a valid Hub repo name"):
        push_students_to_hub([good, bad_name], "someone")
    twin = tmp_path / "other" / good.name
    save_student(tiny_timm_student(), twin, image_processor=PREPROCESSING)
    with pytest.raises(ValueError, match="same repo"):
        push_students_to_hub([good, twin], "someone")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no saved model \(config.json\)"):
        push_students_to_hub([good, empty], "someone")
