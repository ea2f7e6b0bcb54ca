"""Students and teachers: creation, labels, save/reload, preprocessing, compatibility."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (
    AutoImageProcessor,
    PreTrainedModel,
    TimmWrapperForImageClassification,
    ViTForImageClassification,
    ViTImageProcessor,
)

from hf_kd.data import build_transforms
from hf_kd.hub import save_student
from hf_kd.models import (
    count_parameters,
    image_processor_for,
    is_timm_model,
    load_classifier,
    load_image_processor,
    preprocessing_for,
)
from hf_kd.preprocessing import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocessing
from hf_kd.teacher import check_teacher_matches_student

LABELS = {0: "cat", 1: "dog", 2: "fox"}
TIMM_VIT = "vit_tiny_patch16_224"
TIMM_VIT_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
TIMM_CNN = "test_resnet"  # timm's own tiny test ResNet (0.4M parameters)
HF_VIT_KWARGS = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
STUDENTS = {
    "timm_vit": (TIMM_VIT, TIMM_VIT_KWARGS, TimmWrapperForImageClassification),
    "timm_cnn": (TIMM_CNN, {}, TimmWrapperForImageClassification),
    "timm_hub_id": (f"timm/{TIMM_CNN}.r160_in1k", {}, TimmWrapperForImageClassification),
    "transformers_vit": ("vit", HF_VIT_KWARGS, ViTForImageClassification),
}


def tiny(kind: str, **labels: object) -> PreTrainedModel:
    name, kwargs, _ = STUDENTS[kind]
    return load_classifier(
        name, pretrained=False, model_kwargs=kwargs, **(labels or {"id2label": LABELS})
    )


def logits(model: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(pixel_values=pixel_values).logits


def images(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


# --- creation, labels, save and reload ---------------------------------------------------


@pytest.mark.parametrize("kind", list(STUDENTS))
def test_created_with_labels_saved_and_reloaded_with_identical_logits(
    kind: str, tmp_path: Path
) -> None:
    model = tiny(kind)
    assert isinstance(model, STUDENTS[kind][2])
    assert model.config.id2label == LABELS
    assert model.config.label2id == {"cat": 0, "dog": 1, "fox": 2}
    expected = logits(model, images())
    assert expected.shape == (2, 3)

    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    reloaded = load_classifier(str(tmp_path))
    assert type(reloaded) is type(model)
    assert reloaded.config.id2label == LABELS and reloaded.config.label2id == model.config.label2id
    saved, loaded = model.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[key], loaded[key]) for key in saved)
    # bit-equal weights; CPU conv kernels may still round differently on the unaligned,
    # memory-mapped tensors of a reloaded checkpoint (a few 1e-8)
    torch.testing.assert_close(logits(reloaded, images()), expected, rtol=1e-6, atol=1e-6)


def test_timm_hub_id_without_weights_builds_the_tagged_architecture() -> None:
    model = tiny("timm_hub_id")
    assert is_timm_model(model) and model.config.architecture == f"{TIMM_CNN}.r160_in1k"


WEIGHT_TAGS = ("tag", "hf_hub_id", "url", "license")


def test_a_model_trained_from_scratch_claims_no_pretrained_weights(tmp_path: Path) -> None:
    model = load_classifier("resnet10t", num_labels=3, pretrained=False)
    assert model.config.name_or_path == ""
    for pretrained_cfg in (model.config.pretrained_cfg, model.timm_model.pretrained_cfg):
        assert not set(WEIGHT_TAGS) & set(pretrained_cfg), pretrained_cfg
    save_student(model, tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())["pretrained_cfg"]
    assert not set(WEIGHT_TAGS) & set(saved), saved
    # timm's registry keeps the architecture's own weight tags for everyone else
    assert timm.models.get_pretrained_cfg("resnet10t").hf_hub_id == "timm/resnet10t.c3_in1k"
    # a random init from a checkpoint's config is no longer that checkpoint
    fresh = load_classifier(str(tmp_path / "saved"), pretrained=False)
    assert fresh.config.name_or_path == ""
    assert load_classifier(str(tmp_path / "saved")).config.name_or_path == str(tmp_path / "saved")


def test_timm_models_keep_timm_initialisation() -> None:
    # timm zero-initialises the last BatchNorm of each residual block; the transformers
    # wrapper's generic init would set it to one.
    model = tiny("timm_cnn")
    assert torch.count_nonzero(model.timm_model.layer1[0].bn2.weight) == 0
    assert model.timm_model.bn1.weight.eq(1).all()


def test_timm_pretrained_weights_are_loaded_and_the_head_replaced(tmp_path: Path) -> None:
    source = timm.create_model(TIMM_CNN)  # 1000 classes, random: stands in for a download
    weights_file = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), str(weights_file))

    model = load_classifier(
        TIMM_CNN,
        id2label=LABELS,
        model_kwargs={"pretrained_cfg_overlay": {"file": str(weights_file)}},
    )
    loaded = model.timm_model.state_dict()
    for key, value in source.state_dict().items():
        if key.startswith("fc."):
            assert loaded[key].shape[0] == 3
        else:
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_timm_architecture_without_labels_keeps_its_default_head() -> None:
    model = load_classifier(TIMM_CNN, pretrained=False)
    assert model.config.num_labels == 1000 and model.config.id2label[999] == "LABEL_999"
    assert logits(model, images(64)).shape == (2, 1000)


@pytest.mark.parametrize("kind", ["timm_cnn", "transformers_vit"])
def test_reload_with_more_classes_replaces_only_the_head(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny(kind)
    model.save_pretrained(tmp_path)
    five = {index: f"class_{index}" for index in range(5)}
    with caplog.at_level(logging.WARNING, logger="hf_kd.models"):
        reloaded = load_classifier(str(tmp_path), id2label=five)
    assert "head is replaced" in caplog.text
    assert reloaded.config.id2label == five and logits(reloaded, images()).shape == (2, 5)
    original = model.state_dict()
    changed = [
        key for key, value in reloaded.state_dict().items() if value.shape != original[key].shape
    ]
    assert changed and all(
        key.endswith(("fc.weight", "fc.bias", "classifier.weight", "classifier.bias"))
        for key in changed
    )
    for key, value in reloaded.state_dict().items():
        if key not in changed:
            torch.testing.assert_close(value, original[key], rtol=0, atol=0)


def test_relabelling_a_trained_head_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tiny("timm_vit").save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="hf_kd.models"):
        reloaded = load_classifier(str(tmp_path), id2label={0: "ant", 1: "bee", 2: "cow"})
    assert "keeps its trained head but its class names are replaced" in caplog.text
    assert reloaded.config.id2label[0] == "ant"


def test_directory_without_weights_and_config_overrides(tmp_path: Path) -> None:
    model = tiny("transformers_vit")
    model.save_pretrained(tmp_path)
    fresh = load_classifier(
        str(tmp_path), pretrained=False, model_kwargs={"hidden_dropout_prob": 0.25}
    )
    assert fresh.config.hidden_dropout_prob == 0.25 and fresh.config.id2label == LABELS
    assert not torch.equal(logits(fresh, images()), logits(model, images()))
    with pytest.raises(ValueError, match=r"no attribute\(s\) \['hidden_sise'\]"):
        load_classifier(str(tmp_path), model_kwargs={"hidden_sise": 8})


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="must not set 'num_classes'"):
        load_classifier(TIMM_CNN, pretrained=False, num_labels=3, model_kwargs={"num_classes": 3})
    with pytest.raises(ValueError, match="model type, which has no weights: pass pretrained=False"):
        load_classifier("vit", num_labels=3, model_kwargs=HF_VIT_KWARGS)
    with pytest.raises(ValueError, match="needs num_labels"):
        load_classifier("vit", pretrained=False, model_kwargs=HF_VIT_KWARGS)
    with pytest.raises(ValueError, match="num_labels=4 but id2label has 3 entries"):
        load_classifier(TIMM_CNN, pretrained=False, num_labels=4, id2label=LABELS)
    with pytest.raises(ValueError, match=r"keys must be 0\.\.n-1"):
        load_classifier(TIMM_CNN, pretrained=False, id2label={1: "a", 2: "b"})
    with pytest.raises(ValueError, match="not the inverse"):
        load_classifier(
            TIMM_CNN, pretrained=False, id2label=LABELS, label2id={"cat": 1, "dog": 0, "fox": 2}
        )
    with pytest.raises(ValueError, match="unique"):
        load_classifier(TIMM_CNN, pretrained=False, id2label={0: "a", 1: "a"})


@pytest.mark.parametrize("name", ["/no/such/folder", "no/such/deep/folder", "../missing"])
@pytest.mark.parametrize("load", [load_classifier, load_image_processor])
def test_a_missing_folder_is_named_before_any_hub_lookup(load, name: str) -> None:
    with pytest.raises(FileNotFoundError) as error:
        load(name)
    message = str(error.value)
    assert f"the local folder {os.path.abspath(name)} does not exist" in message
    assert f"{name!r} is not a valid Hub model id either" in message


def test_a_file_is_not_taken_for_a_model_folder(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file, not a model folder"):
        load_classifier(str(tmp_path / "model.safetensors"))


def test_label2id_alone_and_string_keys_are_accepted() -> None:
    model = load_classifier(TIMM_CNN, pretrained=False, label2id={"dog": 1, "cat": 0, "fox": 2})
    assert model.config.id2label == LABELS
    from_json = load_classifier(
        TIMM_CNN, pretrained=False, id2label={"0": "cat", "2": "fox", "1": "dog"}
    )
    assert list(from_json.config.id2label.items()) == list(LABELS.items())


# --- preprocessing and image processors --------------------------------------------------


def test_preprocessing_from_timm_data_config() -> None:
    vit = preprocessing_for(tiny("timm_vit"))
    # the real input size of a ViT built with img_size=32, not its architecture's 224
    assert vit == ImagePreprocessing(
        image_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic"
    )

    reference = timm.data.resolve_model_data_config(timm.create_model(TIMM_CNN))
    cnn = preprocessing_for(tiny("timm_cnn"))
    assert cnn.image_size == tuple(reference["input_size"][1:]) == (160, 160)
    assert cnn.mean == reference["mean"] and cnn.std == reference["std"]
    assert cnn.interpolation == reference["interpolation"] == "bilinear"


def test_preprocessing_from_transformers_config_and_processor() -> None:
    model = tiny("transformers_vit")
    assert preprocessing_for(model) == ImagePreprocessing(
        image_size=(32, 32), mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bicubic"
    )
    processor = ViTImageProcessor(
        size={"height": 48, "width": 40},
        image_mean=[0.1, 0.2, 0.3],
        image_std=[0.4, 0.5, 0.6],
        resample=Image.Resampling.BILINEAR,
    )
    assert preprocessing_for(model, processor) == ImagePreprocessing(
        image_size=(48, 40), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), interpolation="bilinear"
    )


@pytest.mark.parametrize("kind", ["timm_vit", "transformers_vit"])
def test_image_processor_saved_with_the_student_reloads_offline(kind: str, tmp_path: Path) -> None:
    model = tiny(kind)
    preprocessing = ImagePreprocessing(
        image_size=(32, 32), mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7), interpolation="bilinear"
    )
    processor = image_processor_for(model, preprocessing)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    reloaded_processor = AutoImageProcessor.from_pretrained(str(tmp_path), local_files_only=True)
    assert type(load_image_processor(str(tmp_path))) is type(reloaded_processor)
    assert preprocessing_for(model, reloaded_processor) == preprocessing
    if is_timm_model(model):  # the timm data config travels in config.json
        assert preprocessing_for(load_classifier(str(tmp_path))) == preprocessing

    # the saved processor computes the evaluation transform of hf_kd.data (crop only here:
    # resizing differs by rounding between PIL and torchvision)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(40, 32, 3), dtype=np.uint8))
    processed = reloaded_processor(image, return_tensors="pt")["pixel_values"][0]
    transformed = build_transforms(preprocessing, train=False)({"image": [image]})["pixel_values"][
        0
    ]
    torch.testing.assert_close(processed, transformed, rtol=0, atol=1e-5)


def test_no_image_processor_to_load(tmp_path: Path) -> None:
    assert load_image_processor("vit") is None
    assert load_image_processor(TIMM_CNN) is None
    tiny("transformers_vit").save_pretrained(tmp_path)  # saved without a processor
    assert load_image_processor(str(tmp_path)) is None


# --- compatibility and size ---------------------------------------------------------------


# across libraries: a timm teacher and a transformers student (hf_kd.teacher's one check)


def test_matching_labels_across_libraries_pass() -> None:
    check_teacher_matches_student(tiny("timm_cnn"), tiny("transformers_vit"))


def test_a_class_count_mismatch_across_libraries_is_refused() -> None:
    teacher = tiny("timm_cnn", num_labels=5)
    with pytest.raises(
        ValueError, match=r"teacher predicts 5 classes but the student 3.*teacher's id2label"
    ):
        check_teacher_matches_student(teacher, tiny("transformers_vit"))


def test_a_label_map_mismatch_across_libraries_is_refused() -> None:
    teacher = tiny("timm_cnn", id2label={0: "cat", 1: "fox", 2: "dog"})
    with pytest.raises(
        ValueError,
        match=(
            r"differ at 2 class index\(es\) "
            r"\(1: teacher 'fox' vs student 'dog', 2: teacher 'dog' vs student 'fox'\)"
        ),
    ):
        check_teacher_matches_student(teacher, tiny("transformers_vit"))


def test_placeholder_names_across_libraries_pass_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    teacher = tiny("timm_cnn", num_labels=3)
    with caplog.at_level(logging.WARNING, logger="hf_kd.teacher"):
        check_teacher_matches_student(teacher, tiny("transformers_vit"))
    assert "only one of teacher and student names its classes" in caplog.text


def test_count_parameters() -> None:
    layer = torch.nn.Linear(3, 2)  # 6 weights + 2 biases
    layer.bias.requires_grad_(False)
    assert count_parameters(layer) == 8
    assert count_parameters(layer, trainable_only=True) == 6
    tied = torch.nn.Sequential(layer, layer)  # a shared layer counts once
    assert count_parameters(tied) == 8
    model = tiny("timm_cnn")
    assert count_parameters(model) == sum(
        p.numel() for p in timm.create_model(TIMM_CNN, num_classes=3).parameters()
    )
