"""Linear-probe transfer evaluation: features, probe, and real runs on STL-10-shaped data and
the Tiny-ImageNet subset with a student trained here."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from huggingface_hub import ModelCard
from PIL import Image
from sklearn.datasets import load_digits
from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_kd.hub import save_student
from hf_kd.model_card import ModelSummary, StudentCard, TrainingSetup, write_model_card
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.transfer import (
    LinearProbeConfig,
    TransferData,
    TransferResult,
    classification_head,
    evaluate_transfer,
    extract_features,
    load_transfer_data,
    pixel_values_from_images,
    read_transfer_results,
    train_linear_probe,
    write_transfer_results,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
# the shared data folder sits next to the checkout (../shared/data) or higher up
TINY_IMAGENET = next(
    (
        folder / "shared" / "data" / "tiny-imagenet-200-subset"
        for folder in REPO_ROOT.parents
        if (folder / "shared" / "data" / "tiny-imagenet-200-subset").is_dir()
    ),
    Path("tiny-imagenet-subset-not-found"),
)
PREPROCESSING = ImagePreprocessing(
    image_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear"
)
DIGITS = load_digits()
DIGIT_LABELS = {index: str(index) for index in range(10)}
STL_SHAPED_FEATURES = Features({"image": ImageFeature(), "label": ClassLabel(num_classes=10)})


def render_digits(indices: np.ndarray, seed: int, size: int = 96) -> list[Image.Image]:
    """STL-10-shaped images (``size`` x ``size`` RGB) of scikit-learn's 8x8 handwritten digits.

    Each digit is scaled to half to three quarters of the canvas, placed at a random
    position, in a random light-on-dark or dark-on-light colour pair, with pixel noise. The
    class is learnable, but position and colour vary so much that globally pooled features
    of a randomly initialised network carry little of it.
    """
    rng = np.random.default_rng(seed)
    images = []
    for index in indices:
        glyph_size = int(rng.integers(size // 2, size * 3 // 4 + 1))
        glyph = Image.fromarray((DIGITS.images[index] * 255 / 16).astype(np.uint8))
        ink = np.asarray(glyph.resize((glyph_size, glyph_size), Image.BILINEAR), np.float32) / 255
        dark, light = rng.uniform(0.0, 0.35, 3), rng.uniform(0.65, 1.0, 3)
        background, foreground = (dark, light) if rng.random() < 0.5 else (light, dark)
        canvas = np.ones((size, size, 3), np.float32) * background
        top, left = rng.integers(0, size - glyph_size + 1, 2)
        window = canvas[top : top + glyph_size, left : left + glyph_size]
        window[:] = window * (1 - ink[..., None]) + foreground * ink[..., None]
        canvas += rng.normal(0.0, 0.05, canvas.shape)
        images.append(Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8)))
    return images


DIGIT_ORDER = np.random.default_rng(0).permutation(len(DIGITS.target))
SOURCE_DIGITS, TARGET_DIGITS = DIGIT_ORDER[:1000], DIGIT_ORDER[1000:]


def stl_shaped_split(indices: np.ndarray, seed: int) -> Dataset:
    return Dataset.from_dict(
        {"image": render_digits(indices, seed), "label": DIGITS.target[indices].tolist()},
        features=STL_SHAPED_FEATURES,
    )


def timm_student(seed: int = 0) -> TimmWrapperForImageClassification:
    torch.manual_seed(seed)
    config = TimmWrapperConfig(
        architecture="test_resnet",
        num_labels=10,
        id2label=DIGIT_LABELS,
        label2id={name: index for index, name in DIGIT_LABELS.items()},
    )
    return TimmWrapperForImageClassification(config)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these small models run faster without threading on shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def train_student(
    model: TimmWrapperForImageClassification, pixel_values: torch.Tensor, labels: torch.Tensor
) -> TimmWrapperForImageClassification:
    """200 AdamW steps (lr 3e-3, batch 32) of plain-torch training; returns it in eval mode."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(200):
        batch = torch.randint(0, len(labels), (32,), generator=generator)
        loss = F.cross_entropy(model(pixel_values=pixel_values[batch]).logits, labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained_student() -> TimmWrapperForImageClassification:
    """``test_resnet`` trained from scratch on rendered digits (a source task, plain torch)."""
    pixel_values = pixel_values_from_images(render_digits(SOURCE_DIGITS, seed=3), PREPROCESSING)
    return train_student(
        timm_student(), pixel_values, torch.as_tensor(DIGITS.target[SOURCE_DIGITS])
    )


@pytest.fixture(scope="module")
def stl_shaped() -> TransferData:
    """A 96x96, 10-class target task (digits the student never saw): 400 train / 397 test."""
    return TransferData(
        dataset="stl10-shaped-digits",
        display_name="STL-10-shaped digits",
        train=stl_shaped_split(TARGET_DIGITS[:400], seed=1),
        eval=stl_shaped_split(TARGET_DIGITS[400:], seed=2),
        eval_split="test",
        image_column="image",
        label_column="label",
        num_classes=10,
    )


# -- features and probe ----------------------------------------------------------------------


def tiny_vit() -> ViTForImageClassification:
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
    )
    return ViTForImageClassification(config)


def tiny_hf_resnet() -> ResNetForImageClassification:
    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10
    )
    return ResNetForImageClassification(config)


def tiny_timm_vit() -> TimmWrapperForImageClassification:
    config = TimmWrapperConfig(architecture="test_vit", num_labels=10, model_args={"img_size": 32})
    return TimmWrapperForImageClassification(config)


@pytest.mark.parametrize(
    "make_model",
    [timm_student, tiny_timm_vit, tiny_vit, tiny_hf_resnet],
    ids=["timm-resnet", "timm-vit", "transformers-vit", "transformers-resnet"],
)
def test_features_are_what_the_classification_head_receives(make_model):
    torch.manual_seed(0)
    model = make_model().eval()
    pixel_values = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        features = extract_features(model, pixel_values)
        logits = model(pixel_values=pixel_values).logits
        if isinstance(model, TimmWrapperForImageClassification):
            head = model.timm_model.get_classifier()
        else:
            head = classification_head(model)
        assert features.ndim == 2 and features.shape[0] == 4
        torch.testing.assert_close(head(features), logits)
        if isinstance(model, ViTForImageClassification):
            cls_token = model.vit(pixel_values=pixel_values).last_hidden_state[:, 0]
            torch.testing.assert_close(features, cls_token)


def test_linear_probe_separates_clusters_at_any_feature_scale():
    generator = torch.Generator().manual_seed(0)
    centres = 4.0 * torch.randn(4, 16, generator=generator)
    labels = torch.arange(400) % 4
    features = centres[labels] + torch.randn(400, 16, generator=generator)
    config = LinearProbeConfig(epochs=10)
    train, test = slice(0, 300), slice(300, 400)
    probe = train_linear_probe(features[train], labels[train], 4, config)
    assert torch.equal(probe.predict(features[test]), labels[test])
    # standardisation makes the probe blind to a feature scale and offset
    rescaled = 1000.0 * features + 50.0
    rescaled_probe = train_linear_probe(rescaled[train], labels[train], 4, config)
    assert torch.equal(rescaled_probe.predict(rescaled[test]), labels[test])


def test_linear_probe_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        train_linear_probe(torch.randn(4, 2), torch.tensor([0, 1, 2, 3]), 3, LinearProbeConfig())


def test_probe_config_rejects_bad_values():
    with pytest.raises(ValueError, match="learning_rate"):
        LinearProbeConfig(learning_rate=0.0)
    with pytest.raises(ValueError, match="epochs"):
        LinearProbeConfig(epochs=0)


# -- real transfer runs ----------------------------------------------------------------------


def test_trained_student_transfers_clearly_better_than_random_init(trained_student, stl_shaped):
    trained = evaluate_transfer(trained_student, stl_shaped, PREPROCESSING)
    random_init = evaluate_transfer(timm_student(seed=0).eval(), stl_shaped, PREPROCESSING)
    assert trained.top1_accuracy >= 0.5
    assert trained.top1_accuracy >= random_init.top1_accuracy + 0.25
    assert (trained.num_train_samples, trained.num_eval_samples) == (400, 397)
    assert (trained.num_classes, trained.feature_dim, trained.image_size) == (10, 96, (32, 32))
    assert not trained_student.training  # evaluation leaves the model's mode as it was


def load_example(monkeypatch: pytest.MonkeyPatch):
    """Import examples/transfer_eval.py (examples/ is not a package) for its ``main``."""
    spec = importlib.util.spec_from_file_location(
        "transfer_eval", REPO_ROOT / "examples" / "transfer_eval.py"
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "transfer_eval", module)  # its dataclasses resolve here
    spec.loader.exec_module(module)
    return module


def test_transfer_eval_example_on_a_local_stl10_shaped_dataset(
    trained_student, stl_shaped, tmp_path, monkeypatch, capsys, progress_bars_on
):
    student_dir, dataset_dir = tmp_path / "student", tmp_path / "stl10-shaped"
    save_student(trained_student, student_dir, image_processor=PREPROCESSING)
    card = StudentCard(
        model_name="test-resnet-digits",
        student=ModelSummary.of(trained_student, "test_resnet"),
        teacher=ModelSummary("teacher-cnn", 1_000_000, "timm"),
        method="kd",
        training=TrainingSetup("digits", 32, 1, 8.0, "fp32", 0),
        eval_accuracy=0.9,
    )
    write_model_card(card, student_dir)
    stl_shaped.train.to_parquet(dataset_dir / "data" / "train-00000-of-00001.parquet")
    stl_shaped.eval.to_parquet(dataset_dir / "data" / "test-00000-of-00001.parquet")

    argv = ["--model_name_or_path", str(student_dir), "--dataset_name", str(dataset_dir)]
    capsys.readouterr()
    result = load_example(monkeypatch).main(argv)
    shown = capsys.readouterr().err  # the progress bars, as the Trainer shows its own
    train_size, eval_size = len(stl_shaped.train), len(stl_shaped.eval)
    assert "Extracting features: 100%|" in shown
    assert f"| {train_size}/{train_size} " in shown and f"| {eval_size}/{eval_size} " in shown
    assert "Training the linear probe: 100%|" in shown

    in_process = evaluate_transfer(trained_student, stl_shaped, PREPROCESSING, disable_tqdm=True)
    assert "Extracting features" not in capsys.readouterr().err
    assert abs(result.top1_accuracy - in_process.top1_accuracy) <= 0.01
    assert (result.eval_split, result.num_classes, result.image_size) == ("test", 10, (32, 32))
    [stored] = read_transfer_results(student_dir)  # default output: the student's folder
    assert stored == result
    model_index = ModelCard.load(student_dir / "README.md").data.eval_results
    assert [entry.task_name for entry in model_index] == [
        "Image Classification",
        "Linear-probe transfer",
    ]
    assert model_index[1].metric_value == round(result.top1_accuracy, 4)


def test_transfer_eval_names_a_missing_model_folder(tmp_path, monkeypatch):
    missing = tmp_path / "no" / "such" / "student"
    argv = ["--model_name_or_path", str(missing), "--dataset_name", "stl10"]
    with pytest.raises(FileNotFoundError) as error:
        load_example(monkeypatch).main(argv)
    assert f"the local folder {missing} does not exist" in str(error.value)
    assert "not a valid Hub model id either" in str(error.value)


@pytest.mark.skipif(not TINY_IMAGENET.is_dir(), reason="Tiny-ImageNet subset not available")
def test_transfer_on_the_tiny_imagenet_subset():
    """A student trained here on 20 source classes, probed on 10 other classes.

    At 32x32 and a few hundred CPU steps the trained student is not better than random
    features on natural images (both score about 0.28 here), so this checks a real run end
    to end and a clear margin over chance; the trained-beats-random check is the STL-10 one.
    """
    data = load_transfer_data(str(TINY_IMAGENET))
    assert (data.eval_split, data.image_column, data.label_column) == ("test", "image", "label")
    assert (data.num_classes, len(data.train), len(data.eval)) == (200, 20_000, 10_000)
    source = data.train.filter(lambda label: 10 <= label < 30, input_columns=["label"])
    torch.manual_seed(0)
    student = TimmWrapperForImageClassification(
        TimmWrapperConfig(architecture="test_resnet", num_labels=20)
    )
    student = train_student(
        student,
        pixel_values_from_images(source["image"], PREPROCESSING),
        torch.as_tensor(source["label"]) - 10,
    )
    # target: the first 10 classes (100 train / 50 test images each), unseen in training
    target = dataclasses.replace(
        data,
        num_classes=10,
        train=data.train.filter(lambda label: label < 10, input_columns=["label"]),
        eval=data.eval.filter(lambda label: label < 10, input_columns=["label"]),
    )
    result = evaluate_transfer(student, target, PREPROCESSING)
    assert (result.num_train_samples, result.num_eval_samples) == (1000, 500)
    assert result.top1_accuracy > 0.18  # chance is 0.10 (sd 0.013 over 500 images)


@pytest.mark.skipif(not TINY_IMAGENET.is_dir(), reason="Tiny-ImageNet subset not available")
def test_load_transfer_data_subsets_and_bad_splits():
    data = load_transfer_data(str(TINY_IMAGENET), max_train_samples=50, max_eval_samples=20)
    assert (len(data.train), len(data.eval)) == (50, 20)
    assert len(set(data.train["label"])) > 10  # a random subset, not the first class
    with pytest.raises(ValueError, match="no split 'valid'"):
        load_transfer_data(str(TINY_IMAGENET), eval_split="valid")


def test_results_file_keeps_one_entry_per_dataset(tmp_path):
    def result(dataset: str, accuracy: float) -> TransferResult:
        return TransferResult(dataset, dataset, "test", accuracy, 10, 100, 50, 8, (32, 32))

    write_transfer_results(tmp_path, result("tanganke/stl10", 0.4))
    write_transfer_results(tmp_path, result("zh-plus/tiny-imagenet", 0.2))
    write_transfer_results(tmp_path, result("tanganke/stl10", 0.5))
    stored = read_transfer_results(tmp_path)
    assert [(entry.dataset, entry.top1_accuracy) for entry in stored] == [
        ("zh-plus/tiny-imagenet", 0.2),
        ("tanganke/stl10", 0.5),
    ]
    assert stored[1] == result("tanganke/stl10", 0.5)  # probe config and sizes round-trip
