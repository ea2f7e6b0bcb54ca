"""Students and teachers behind one interface: timm architectures and transformers classifiers.

Every model is a ``transformers.PreTrainedModel`` called as ``model(pixel_values=...).logits``,
so the Trainer, ``save_pretrained`` and ``from_pretrained`` work for all of them. timm
architectures are wrapped in ``transformers.TimmWrapperForImageClassification``.

How ``load_classifier`` reads a name (the first rule that matches wins):

1. an existing local directory: ``AutoModelForImageClassification`` on its ``config.json``,
   which says itself whether it holds a wrapped timm model (``model_type: timm_wrapper``,
   also timm's own ``pretrained_cfg`` layout) or a transformers model;
2. a timm Hub id, ``timm/<architecture>[.<tag>]`` (also ``hf-hub:timm/...``): pretrained
   weights through transformers' timm support; with ``pretrained=False`` the architecture
   is built offline with random weights;
3. a timm architecture name (``timm.is_model``: ``resnet18``, ``vit_tiny_patch16_224``,
   ``resnet18.a1_in1k``), built by ``timm.create_model`` with timm's own initialisation or
   timm's pretrained weights;
4. a transformers model type (a key of ``transformers.CONFIG_MAPPING``: ``vit``,
   ``convnext``, ``resnet``, ...), random init only: ``AutoConfig.for_model(type,
   **model_kwargs)``; no timm architecture has such a bare name. The config's
   ``architectures`` chooses among a type's image classifiers, as in a checkpoint: ``deit``
   with ``{"architectures": ["DeiTForImageClassificationWithTeacher"]}`` builds the DeiT
   with a distillation token;
5. anything else: a transformers Hub id.

The label maps ``id2label``/``label2id`` always end up in the config, so they are saved
with the model and checked against the teacher's by
:func:`hf_kd.teacher.check_teacher_matches_student`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import timm
import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from PIL import Image
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    BitImageProcessor,
    PretrainedConfig,
    PreTrainedModel,
    TimmWrapperConfig,
    TimmWrapperForImageClassification,
)
from transformers.image_processing_utils import BaseImageProcessor
from transformers.models.timm_wrapper import TimmWrapperImageProcessor

from hf_kd import models_cifar  # noqa: F401  (registers the cifar_resnet* timm architectures)
from hf_kd.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PIL_RESAMPLING,
    ImagePreprocessing,
    pil_resampling,
)

logger = logging.getLogger(__name__)

TIMM_HUB_PREFIXES = ("hf-hub:timm/", "timm/")
DEFAULT_IMAGE_SIZE = 224
CONFIG_FILE = "config.json"
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"

# the interpolation name of each PIL filter a transformers image processor may store
_INTERPOLATION_OF_PIL_FILTER = {code: name for name, code in PIL_RESAMPLING.items()}


def load_classifier(
    name_or_path: str,
    *,
    num_labels: int | None = None,
    id2label: Mapping[int, str] | None = None,
    label2id: Mapping[str, int] | None = None,
    pretrained: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """An image classifier from a timm name, a transformers model type, a Hub id or a directory.

    See the module docstring for how ``name_or_path`` is read.

    Args:
        name_or_path: what to load (see above).
        num_labels, id2label, label2id: the classes. ``id2label`` alone is enough (its keys
            must be ``0..n-1``); ``num_labels`` alone gives names ``LABEL_i``. When they are
            left out a checkpoint keeps its own head and labels, and a timm architecture gets
            its default head (ImageNet: 1000 classes). A checkpoint whose head has another
            size gets a new, randomly initialised head (``ignore_mismatched_sizes``).
        pretrained: load weights; ``False`` builds the same architecture with random weights
            (offline for timm names, timm Hub ids and model types).
        model_kwargs: for timm, keyword arguments of ``timm.create_model`` (stored as the
            config's ``model_args``, e.g. ``{"img_size": 32, "drop_path_rate": 0.1}``; the
            class count is ``num_labels``, never ``num_classes``); for transformers, config
            attributes (``{"hidden_size": 192, ...}`` for a model type,
            ``{"hidden_dropout_prob": 0.1}`` for a checkpoint).
        trust_remote_code: run code shipped with a Hub checkpoint; only for repositories
            you trust.

    Raises:
        ValueError: inconsistent labels, ``num_classes`` in ``model_kwargs``, unknown config
            attributes, or ``pretrained=True`` for a bare model type (it has no weights).
        FileNotFoundError: ``name_or_path`` is neither an existing folder nor a valid Hub id
            (nor a timm architecture or model type).
    """
    labels = _label_maps(num_labels, id2label, label2id)
    model_kwargs = dict(model_kwargs or {})
    if "num_classes" in model_kwargs:
        raise ValueError(
            "model_kwargs must not set 'num_classes': pass num_labels=... (or id2label) instead"
        )
    if os.path.isdir(name_or_path):
        return _load_checkpoint(name_or_path, labels, pretrained, model_kwargs, trust_remote_code)
    timm_architecture = _timm_hub_architecture(name_or_path)
    if timm_architecture is not None:
        if pretrained:
            hub_id = name_or_path.removeprefix("hf-hub:")  # transformers takes plain Hub ids
            return _load_checkpoint(hub_id, labels, pretrained, model_kwargs, trust_remote_code)
        return _create_timm_classifier(timm_architecture, labels, False, model_kwargs)
    if timm.is_model(name_or_path):
        return _create_timm_classifier(name_or_path, labels, pretrained, model_kwargs)
    if name_or_path in CONFIG_MAPPING:
        return _create_from_model_type(name_or_path, labels, pretrained, model_kwargs)
    check_hub_model_id(name_or_path)
    return _load_checkpoint(name_or_path, labels, pretrained, model_kwargs, trust_remote_code)


def load_image_processor(
    name_or_path: str, *, trust_remote_code: bool = False
) -> BaseImageProcessor | None:
    """The image processor stored with a checkpoint, or ``None`` when there is none to load.

    ``None`` for timm architecture names and transformers model types (no checkpoint) and for
    a local directory holding neither ``preprocessor_config.json`` nor timm settings
    (``pretrained_cfg`` in ``config.json``); otherwise ``AutoImageProcessor.from_pretrained``.
    A name that is neither an existing folder nor a valid Hub id is a ``FileNotFoundError``.
    Pass the result to :func:`preprocessing_for`: a pretrained transformers checkpoint's
    normalisation is recorded only in its processor.
    """
    if os.path.isdir(name_or_path):
        if not _directory_has_image_processor(name_or_path):
            return None
    elif _timm_hub_architecture(name_or_path) is None and (
        timm.is_model(name_or_path) or name_or_path in CONFIG_MAPPING
    ):
        return None
    hub_id_or_path = name_or_path.removeprefix("hf-hub:")
    if not os.path.isdir(hub_id_or_path):
        check_hub_model_id(hub_id_or_path)
    return AutoImageProcessor.from_pretrained(hub_id_or_path, trust_remote_code=trust_remote_code)


def check_hub_model_id(name: str) -> None:
    """Raise ``FileNotFoundError`` unless ``name``, which is not a local folder, is a valid
    Hub model id: a mistyped folder would otherwise end in the Hub client's repo-id error."""
    try:
        validate_repo_id(name)
    except HFValidationError as error:
        found = "is a file, not a model folder" if os.path.exists(name) else "does not exist"
        raise FileNotFoundError(
            f"cannot load the model {name!r}: the local folder {os.path.abspath(name)} {found}, "
            f"and {name!r} is not a valid Hub model id either ({error}). Pass an existing "
            "folder, a Hub id (owner/name), a timm architecture or a transformers model type"
        ) from None


def is_timm_model(model: PreTrainedModel) -> bool:
    """Whether ``model`` is a wrapped timm architecture."""
    return isinstance(model, TimmWrapperForImageClassification)


def preprocessing_for(
    model: PreTrainedModel, image_processor: BaseImageProcessor | None = None
) -> ImagePreprocessing:
    """The resolution, normalisation and interpolation that ``model`` expects.

    Read, in this order, from ``image_processor`` when given (any transformers image
    processor, or a ``TimmWrapperImageProcessor``); for a timm model from the timm data
    config (``pretrained_cfg`` in its config when present, else
    ``timm.data.resolve_model_data_config`` on the timm module; a fixed-size ViT uses its
    real ``img_size``); for a transformers model from ``config.image_size`` (else 224) with
    ImageNet mean/std and bicubic interpolation. For a pretrained transformers checkpoint
    pass its own processor (:func:`load_image_processor`): its config does not record the
    normalisation.
    """
    if image_processor is not None:
        return _preprocessing_from_image_processor(image_processor)
    if is_timm_model(model):
        return _preprocessing_from_timm_data_config(_timm_data_config(model))
    image_size = getattr(model.config, "image_size", DEFAULT_IMAGE_SIZE)
    return ImagePreprocessing(image_size=_as_height_width(image_size))


def image_processor_for(
    model: PreTrainedModel, preprocessing: ImagePreprocessing
) -> BaseImageProcessor:
    """A transformers image processor doing the evaluation transform of ``preprocessing``.

    Resize the shorter side to ``max(height, width)``, centre-crop ``(height, width)``,
    scale to ``[0, 1]``, normalise; the same as ``hf_kd.data.build_transforms(...,
    train=False)``. ``AutoImageProcessor.from_pretrained(output_dir)`` reloads it offline.

    * transformers model: a ``BitImageProcessor`` (converts to RGB, compositing transparency
      on white); save it next to the model (``processor.save_pretrained(output_dir)``, or
      give it to the Trainer as ``processing_class``).
    * timm model: a ``TimmWrapperImageProcessor``. transformers keeps a timm model's image
      settings in the model's own ``config.json`` (``pretrained_cfg``, as timm does on the
      Hub) and its ``save_pretrained`` writes nothing, so this function also writes
      ``preprocessing`` into ``model.config.pretrained_cfg``: saving the model saves the
      processor.
    """
    height, width = preprocessing.image_size
    if is_timm_model(model):
        pretrained_cfg = {
            **_timm_pretrained_cfg(model),
            "input_size": (3, height, width),
            "mean": tuple(preprocessing.mean),
            "std": tuple(preprocessing.std),
            "interpolation": preprocessing.interpolation,
            "crop_pct": 1.0,
            "crop_mode": "center",
        }
        model.config.pretrained_cfg = pretrained_cfg
        return TimmWrapperImageProcessor(
            pretrained_cfg=pretrained_cfg, architecture=model.config.architecture
        )
    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": max(height, width)},
        resample=pil_resampling(preprocessing.interpolation),
        do_center_crop=True,
        crop_size={"height": height, "width": width},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(preprocessing.mean),
        image_std=list(preprocessing.std),
        do_convert_rgb=True,
    )


def count_parameters(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (shared tensors counted once)."""
    return sum(
        parameter.numel()
        for parameter in model.parameters()
        if parameter.requires_grad or not trainable_only
    )


def _directory_has_image_processor(directory: str) -> bool:
    if os.path.isfile(os.path.join(directory, IMAGE_PROCESSOR_FILE)):
        return True
    config_file = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_file):
        return False
    with open(config_file, encoding="utf-8") as file:
        return "pretrained_cfg" in json.load(file)


def _label_maps(
    num_labels: int | None,
    id2label: Mapping[int, str] | None,
    label2id: Mapping[str, int] | None,
) -> tuple[dict[int, str], dict[str, int]] | None:
    """Consistent ``(id2label, label2id)`` from any of the three, or ``None`` if none is given."""
    if id2label is None and label2id is not None:
        id2label = {index: name for name, index in label2id.items()}
    if id2label is None:
        if num_labels is None:
            return None
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        id2label = {index: f"LABEL_{index}" for index in range(num_labels)}
    normalised = {int(index): str(name) for index, name in id2label.items()}
    if sorted(normalised) != list(range(len(normalised))) or not normalised:
        raise ValueError(
            f"id2label keys must be 0..n-1, got {sorted(normalised)[:10]}"
            f"{'...' if len(normalised) > 10 else ''}"
        )
    if num_labels is not None and num_labels != len(normalised):
        raise ValueError(f"num_labels={num_labels} but id2label has {len(normalised)} entries")
    ordered = {index: normalised[index] for index in range(len(normalised))}
    inverse = {name: index for index, name in ordered.items()}
    if len(inverse) != len(ordered):
        raise ValueError("label names in id2label must be unique")
    if label2id is not None and {str(k): int(v) for k, v in label2id.items()} != inverse:
        raise ValueError("label2id is not the inverse of id2label")
    return ordered, inverse


def _apply_label_maps(
    config: PretrainedConfig, labels: tuple[dict[int, str], dict[str, int]]
) -> None:
    config.id2label, config.label2id = dict(labels[0]), dict(labels[1])


def _timm_hub_architecture(name: str) -> str | None:
    """``resnet18.a1_in1k`` for ``timm/resnet18.a1_in1k``; ``None`` for other names."""
    for prefix in TIMM_HUB_PREFIXES:
        if name.startswith(prefix):
            architecture = name[len(prefix) :]
            return architecture if timm.is_model(architecture) else None
    return None


def _create_timm_classifier(
    architecture: str,
    labels: tuple[dict[int, str], dict[str, int]] | None,
    pretrained: bool,
    model_kwargs: dict[str, Any],
) -> TimmWrapperForImageClassification:
    if labels is None:
        default_classes = timm.models.get_pretrained_cfg(architecture).num_classes
        labels = _label_maps(default_classes, None, None)
    # timm's own initialisation (or pretrained weights); the wrapper's generic init would
    # redraw every conv and linear layer from N(0, 0.02).
    timm_model = timm.create_model(
        architecture, pretrained=pretrained, num_classes=len(labels[0]), **model_kwargs
    )
    config = TimmWrapperConfig(architecture=architecture, model_args=model_kwargs or None)
    _apply_label_maps(config, labels)
    model = TimmWrapperForImageClassification(config)
    model.timm_model.load_state_dict(timm_model.state_dict())
    if pretrained:
        # where the weights came from, as from_pretrained records a checkpoint's name
        config.name_or_path = timm_model.pretrained_cfg.get("hf_hub_id") or architecture
    else:
        _forget_pretrained_weights(model)
    config.pretrained_cfg = _timm_pretrained_cfg(model)
    return model


def _create_from_model_type(
    model_type: str,
    labels: tuple[dict[int, str], dict[str, int]] | None,
    pretrained: bool,
    model_kwargs: dict[str, Any],
) -> PreTrainedModel:
    if pretrained:
        raise ValueError(
            f"{model_type!r} is a transformers model type, which has no weights: pass "
            "pretrained=False for a random init, or a Hub id / directory for weights"
        )
    if labels is None:
        raise ValueError(f"a random-init {model_type!r} needs num_labels=... or id2label=...")
    config = AutoConfig.for_model(model_type)
    _update_config(config, model_kwargs)
    _apply_label_maps(config, labels)
    return AutoModelForImageClassification.from_config(config)


def _load_checkpoint(
    name_or_path: str,
    labels: tuple[dict[int, str], dict[str, int]] | None,
    pretrained: bool,
    model_kwargs: dict[str, Any],
    trust_remote_code: bool,
) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if isinstance(config, TimmWrapperConfig):
        if model_kwargs:
            config.model_args = {**(config.model_args or {}), **model_kwargs}
    else:
        _update_config(config, model_kwargs)
    head_changes = labels is not None and len(labels[0]) != config.num_labels
    if labels is not None:
        _warn_on_relabel(name_or_path, config, labels[0], head_changes)
        _apply_label_maps(config, labels)
    if not pretrained:
        return _forget_pretrained_weights(
            AutoModelForImageClassification.from_config(config, trust_remote_code=trust_remote_code)
        )
    return AutoModelForImageClassification.from_pretrained(
        name_or_path,
        config=config,
        ignore_mismatched_sizes=head_changes,
        trust_remote_code=trust_remote_code,
    )


# timm pretrained_cfg entries that describe a checkpoint's weights (its tag, Hub id, source,
# license, paper), not the architecture or its preprocessing
TIMM_WEIGHT_FIELDS = (
    "hf_hub_id",
    "hf_hub_filename",
    "tag",
    "url",
    "file",
    "state_dict",
    "source",
    "custom_load",
    "license",
    "origin_url",
    "paper_ids",
    "paper_name",
    "notes",
    "description",
)


def _forget_pretrained_weights(model: PreTrainedModel) -> PreTrainedModel:
    """Mark a randomly initialised model as such: no ``name_or_path`` (the card's
    initialisation) and, for timm, none of the ImageNet weight tags of its architecture's
    default ``pretrained_cfg``, which its exports would otherwise claim."""
    model.config.name_or_path = ""
    if is_timm_model(model):
        saved = getattr(model.config, "pretrained_cfg", None)
        for pretrained_cfg in (model.timm_model.pretrained_cfg, saved):
            for key in TIMM_WEIGHT_FIELDS:
                (pretrained_cfg or {}).pop(key, None)
    return model


def _warn_on_relabel(
    name_or_path: str, config: PretrainedConfig, id2label: dict[int, str], head_changes: bool
) -> None:
    if head_changes:
        logger.warning(
            "%s has %d classes, %d requested: its classification head is replaced by a new, "
            "randomly initialised one",
            name_or_path,
            config.num_labels,
            len(id2label),
        )
        return
    current = _id2label_of(config)
    if current != id2label and not _has_placeholder_names(current):
        logger.warning(
            "%s keeps its trained head but its class names are replaced (%s... -> %s...)",
            name_or_path,
            list(current.values())[:3],
            list(id2label.values())[:3],
        )


def _update_config(config: PretrainedConfig, overrides: Mapping[str, Any]) -> None:
    unknown = sorted(key for key in overrides if not hasattr(config, key))
    if unknown:
        raise ValueError(
            f"{type(config).__name__} has no attribute(s) {unknown}: model_kwargs for a "
            "transformers model must be config attributes"
        )
    for key, value in overrides.items():
        setattr(config, key, value)


def _id2label_of(config: PretrainedConfig) -> dict[int, str]:
    return {int(index): str(name) for index, name in (config.id2label or {}).items()}


def _has_placeholder_names(id2label: Mapping[int, str]) -> bool:
    return all(name == f"LABEL_{index}" for index, name in id2label.items())


def _timm_pretrained_cfg(model: TimmWrapperForImageClassification) -> dict[str, Any]:
    """The timm data config of a wrapped model as a JSON-able dict, with its real input size.

    A ViT built with ``img_size=32`` keeps its architecture's 224 in timm's
    ``pretrained_cfg``; the patch embedding knows the size the model accepts.
    """
    saved = getattr(model.config, "pretrained_cfg", None)
    pretrained_cfg = dict(saved) if saved else dict(model.timm_model.pretrained_cfg)
    pretrained_cfg.pop("num_classes", None)
    patch_embed_size = getattr(getattr(model.timm_model, "patch_embed", None), "img_size", None)
    if not saved and patch_embed_size is not None:
        pretrained_cfg["input_size"] = (3, *_as_height_width(patch_embed_size))
    return pretrained_cfg


def _timm_data_config(model: TimmWrapperForImageClassification) -> dict[str, Any]:
    return timm.data.resolve_data_config(
        pretrained_cfg=_timm_pretrained_cfg(model), use_test_size=False, verbose=False
    )


def _preprocessing_from_timm_data_config(data_config: Mapping[str, Any]) -> ImagePreprocessing:
    return ImagePreprocessing(
        image_size=_as_height_width(data_config["input_size"][-2:]),
        mean=tuple(float(value) for value in data_config["mean"]),
        std=tuple(float(value) for value in data_config["std"]),
        interpolation=str(data_config["interpolation"]),
    )


def _preprocessing_from_image_processor(processor: BaseImageProcessor) -> ImagePreprocessing:
    data_config = getattr(processor, "data_config", None)
    if data_config is not None:  # TimmWrapperImageProcessor
        return _preprocessing_from_timm_data_config(data_config)
    crop_size = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and crop_size:
        image_size = (crop_size["height"], crop_size["width"])
    else:
        size = getattr(processor, "size", None) or {}
        if "height" in size and "width" in size:
            image_size = (size["height"], size["width"])
        elif "shortest_edge" in size:
            image_size = (size["shortest_edge"], size["shortest_edge"])
        else:
            raise ValueError(
                f"cannot read an input size from {type(processor).__name__} (size={size}); "
                "pass an ImagePreprocessing instead"
            )
    if getattr(processor, "do_normalize", True):
        mean = tuple(float(value) for value in (processor.image_mean or IMAGENET_MEAN))
        std = tuple(float(value) for value in (processor.image_std or IMAGENET_STD))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = getattr(processor, "resample", Image.Resampling.BICUBIC)
    return ImagePreprocessing(
        image_size=(int(image_size[0]), int(image_size[1])),
        mean=mean,
        std=std,
        interpolation=_INTERPOLATION_OF_PIL_FILTER[Image.Resampling(int(resample))],
    )


def _as_height_width(size: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)
