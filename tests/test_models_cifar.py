"""The CIFAR ResNets: timm registration, architecture, and the hf-kd model interface."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from transformers import TimmWrapperForImageClassification

from hf_kd.models import count_parameters, load_classifier, preprocessing_for
from hf_kd.models_cifar import CIFAR100_MEAN, CIFAR100_STD, CifarResNet

ARCHITECTURES = (
    "cifar_resnet8",
    "cifar_resnet14",
    "cifar_resnet20",
    "cifar_resnet8x2",
    "cifar_resnet14x2",
    "cifar_resnet8x4",
    "cifar_resnet32x4",
)
LABELS = {0: "apple", 1: "bee", 2: "cloud"}


def test_every_architecture_is_a_timm_model() -> None:
    assert set(timm.list_models("cifar_resnet*")) == set(ARCHITECTURES)
    for name in ARCHITECTURES:
        assert timm.models.get_pretrained_cfg(name).mean == CIFAR100_MEAN


def test_resnet8_has_the_hand_counted_parameters() -> None:
    # stem 3*16*9 + BN 32; stage 1: 2 * 16*16*9 + 2 BN (64); stage 2: 16*32*9 + 32*32*9 +
    # BN 128 + 1x1 shortcut 16*32 + BN 64; stage 3: 32*64*9 + 64*64*9 + BN 256 + 32*64 + 128;
    # head 64*100 + 100.
    expected = (432 + 32) + (4608 + 64) + (13824 + 128 + 512 + 64) + (55296 + 256 + 2048 + 128)
    expected += 6500
    assert count_parameters(timm.create_model("cifar_resnet8", num_classes=100)) == expected


@pytest.mark.parametrize("size", [16, 32])
def test_stages_keep_then_halve_the_resolution(size: int) -> None:
    model = timm.create_model("cifar_resnet8x4", num_classes=7).eval()
    features = model.forward_features(torch.zeros(2, 3, size, size))
    assert features.shape == (2, 256, size // 4, size // 4)
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 7)


def test_bad_shape_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="blocks_per_stage"):
        CifarResNet(blocks_per_stage=0, stem_width=16, stage_widths=(16,))


def test_load_classifier_wraps_and_reloads_a_cifar_resnet(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = load_classifier("cifar_resnet8", id2label=LABELS, pretrained=False).eval()
    assert isinstance(model, TimmWrapperForImageClassification)
    preprocessing = preprocessing_for(model)
    assert preprocessing.image_size == (32, 32)
    assert preprocessing.mean == pytest.approx(CIFAR100_MEAN)
    assert preprocessing.std == pytest.approx(CIFAR100_STD)

    pixels = torch.randn(3, 3, 16, 16)
    logits = model(pixel_values=pixels).logits
    assert logits.shape == (3, len(LABELS))
    model.save_pretrained(tmp_path)
    reloaded = load_classifier(str(tmp_path)).eval()
    assert reloaded.config.architecture == "cifar_resnet8"
    assert reloaded.config.id2label == LABELS
    torch.testing.assert_close(reloaded(pixel_values=pixels).logits, logits)


def test_timm_initialisation_survives_the_wrapper() -> None:
    # The wrapper's generic init would draw every conv from N(0, 0.02); Kaiming fan-out
    # for a 3x3 conv with 16 output channels has std sqrt(2 / (16 * 9)) = 0.118.
    torch.manual_seed(0)
    model = load_classifier("cifar_resnet8", num_labels=10, pretrained=False)
    stem_weight = model.timm_model.stem[0].weight
    assert stem_weight.std().item() == pytest.approx((2 / (16 * 9)) ** 0.5, rel=0.25)
