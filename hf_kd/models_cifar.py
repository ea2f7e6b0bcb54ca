"""CIFAR-style ResNets registered as timm architectures (``cifar_resnet8x4``, ...).

The small ResNets of the CIFAR distillation literature (He et al., 2016, section 4.2; the
``x4`` widths of the CRD / mdistiller benchmarks): a 3x3 stem without downsampling, stages
of basic blocks with strides ``1, 2, 2(, 2)``, global average pooling and a linear head.
ImageNet networks downsample a 32x32 image to 1x1 in their stem; these keep the spatial
size until the stages, so they suit 16x16 and 32x32 inputs.

Importing this module registers the architectures with ``timm.models.register_model``;
:mod:`hf_kd.models` imports it, so ``load_classifier("cifar_resnet8x4", num_labels=100,
pretrained=False)`` returns a ``TimmWrapperForImageClassification`` that the Trainer,
``save_pretrained`` and ``load_classifier(<directory>)`` handle like any timm model. They
have no pretrained weights.

Architectures (blocks per stage; stem width, stage widths):

==========================  ======  ======================
``cifar_resnet8``           1       16; 16, 32, 64
``cifar_resnet14``          2       16; 16, 32, 64
``cifar_resnet20``          3       16; 16, 32, 64
``cifar_resnet8x2``         1       32; 32, 64, 128
``cifar_resnet14x2``        2       32; 32, 64, 128
``cifar_resnet8x4``         1       32; 64, 128, 256
``cifar_resnet32x4``        5       32; 64, 128, 256
==========================  ======  ======================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet with timm's classifier interface (``forward_features``/``forward_head``).

    Args:
        blocks_per_stage: basic blocks in each stage.
        stem_width: channels of the 3x3 stem.
        stage_widths: channels of each stage; the first stage keeps the resolution, every
            later one halves it.
        num_classes: size of the linear head (0: no head, ``forward`` returns pooled features).
        in_chans: input channels.
    """

    def __init__(
        self,
        blocks_per_stage: int,
        stem_width: int,
        stage_widths: Sequence[int],
        num_classes: int = 100,
        in_chans: int = 3,
        **unused_timm_kwargs: Any,
    ) -> None:
        super().__init__()
        if blocks_per_stage < 1 or not stage_widths:
            raise ValueError("a CifarResNet needs blocks_per_stage >= 1 and at least one stage")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = stage_widths[-1]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
        )
        blocks = []
        in_channels = stem_width
        for stage_index, width in enumerate(stage_widths):
            for block_index in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
        self.stages = nn.Sequential(*blocks)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = (
            nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = torch.flatten(self.global_pool(x), 1)
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _cifar_cfg() -> dict[str, Any]:
    return {
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "first_conv": "stem.0",
        "classifier": "fc",
    }


_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "cifar_resnet8": {"blocks_per_stage": 1, "stem_width": 16, "stage_widths": (16, 32, 64)},
    "cifar_resnet14": {"blocks_per_stage": 2, "stem_width": 16, "stage_widths": (16, 32, 64)},
    "cifar_resnet20": {"blocks_per_stage": 3, "stem_width": 16, "stage_widths": (16, 32, 64)},
    "cifar_resnet8x2": {"blocks_per_stage": 1, "stem_width": 32, "stage_widths": (32, 64, 128)},
    "cifar_resnet14x2": {"blocks_per_stage": 2, "stem_width": 32, "stage_widths": (32, 64, 128)},
    "cifar_resnet8x4": {"blocks_per_stage": 1, "stem_width": 32, "stage_widths": (64, 128, 256)},
    "cifar_resnet32x4": {"blocks_per_stage": 5, "stem_width": 32, "stage_widths": (64, 128, 256)},
}

default_cfgs = generate_default_cfgs({name: _cifar_cfg() for name in _ARCHITECTURES})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> CifarResNet:
    return build_model_with_cfg(
        CifarResNet, variant, pretrained, **{**_ARCHITECTURES[variant], **kwargs}
    )


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create("cifar_resnet8", pretrained, **kwargs)


@register_model
def cifar_resnet14(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create("cifar_resnet14", pretrained, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create("cifar_resnet20", pretrained, **kwargs)


@register_model
def cifar_resnet8x2(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create("cifar_resnet8x2", pretrained, **kwargs)


@register_model
def cifar_resnet14x2(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create("cifar_resnet14x2", pretrained, **kwargs)


@register_model
def cifar_resnet8x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create("cifar_resnet8x4", pretrained, **kwargs)


@register_model
def cifar_resnet32x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return _create("cifar_resnet32x4", pretrained, **kwargs)
