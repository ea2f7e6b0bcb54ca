"""Conversions between :class:`ImagePreprocessing`, transformers image processors and timm
data configs, and the preprocessing a model expects.

A timm student keeps its preprocessing in ``config.json`` (``pretrained_cfg``: what timm and
``TimmWrapperImageProcessor`` read); a transformers student keeps it in
``preprocessor_config.json``. ``ImagePreprocessing`` is hf-kd's library-neutral view of both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import timm.data
from transformers import BaseImageProcessor, PreTrainedModel, ViTImageProcessor
from transformers.models.timm_wrapper import TimmWrapperImageProcessor, TimmWrapperPreTrainedModel

from hf_kd.preprocessing import ImagePreprocessing

logger = logging.getLogger(__name__)

# PIL.Image.Resampling values, which transformers image processors store as ``resample``
PIL_RESAMPLE_BY_NAME = {
    "nearest": 0,
    "lanczos": 1,
    "bilinear": 2,
    "bicubic": 3,
    "box": 4,
    "hamming": 5,
}
INTERPOLATION_BY_PIL_RESAMPLE = {value: name for name, value in PIL_RESAMPLE_BY_NAME.items()}


def is_timm_model(model: PreTrainedModel) -> bool:
    """Whether ``model`` is a timm architecture wrapped by transformers' ``TimmWrapper``."""
    return isinstance(model, TimmWrapperPreTrainedModel)


def preprocessing_from_timm_config(data_config: Mapping[str, object]) -> ImagePreprocessing:
    """The preprocessing of a timm ``pretrained_cfg`` or resolved data config."""
    resolved = timm.data.resolve_data_config(pretrained_cfg=dict(data_config), verbose=False)
    _, height, width = resolved["input_size"]
    return ImagePreprocessing(
        image_size=(int(height), int(width)),
        mean=tuple(float(value) for value in resolved["mean"]),
        std=tuple(float(value) for value in resolved["std"]),
        interpolation=str(resolved.get("interpolation") or "bicubic"),
    )


def preprocessing_from_image_processor(processor: BaseImageProcessor) -> ImagePreprocessing:
    """The resolution, normalisation and interpolation of a transformers image processor.

    The output size is the centre crop when the processor crops, else its resize target;
    a ``shortest_edge`` size is taken as a square.
    """
    if isinstance(processor, TimmWrapperImageProcessor):
        return preprocessing_from_timm_config(processor.data_config)
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    height, width = _size_value(size, "height"), _size_value(size, "width")
    if height is None or width is None:
        height = width = _size_value(size, "shortest_edge")
    if height is None:
        raise ValueError(f"cannot read an output size from the image processor's size {size!r}")
    resample = getattr(processor, "resample", None)
    return ImagePreprocessing(
        image_size=(int(height), int(width)),
        mean=tuple(float(value) for value in processor.image_mean),
        std=tuple(float(value) for value in processor.image_std),
        interpolation=INTERPOLATION_BY_PIL_RESAMPLE.get(int(resample), "bilinear")
        if resample is not None
        else "bilinear",
    )


def _size_value(size: object, key: str) -> int | None:
    value = size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)
    return int(value) if value is not None else None


def timm_data_config(preprocessing: ImagePreprocessing) -> dict[str, object]:
    """A timm data config for ``preprocessing``: resize straight to the input size, no crop."""
    height, width = preprocessing.image_size
    return {
        "input_size": (3, height, width),
        "mean": tuple(preprocessing.mean),
        "std": tuple(preprocessing.std),
        "interpolation": preprocessing.interpolation,
        "crop_pct": 1.0,
        "crop_mode": "center",
    }


def image_processor_for(preprocessing: ImagePreprocessing) -> ViTImageProcessor:
    """A generic resize-rescale-normalise transformers image processor for ``preprocessing``.

    ``ViTImageProcessor`` is architecture-neutral (resize to ``height x width``, scale to
    [0, 1], normalise), so it serves any transformers student.
    """
    height, width = preprocessing.image_size
    return ViTImageProcessor(
        do_resize=True,
        size={"height": height, "width": width},
        resample=PIL_RESAMPLE_BY_NAME.get(preprocessing.interpolation, 2),
        do_rescale=True,
        do_normalize=True,
        image_mean=list(preprocessing.mean),
        image_std=list(preprocessing.std),
    )


def model_preprocessing(
    model: PreTrainedModel, image_processor: BaseImageProcessor | None = None
) -> ImagePreprocessing:
    """The preprocessing ``model`` expects.

    In order: the given image processor; for a timm model the ``pretrained_cfg`` saved in
    its config (what an hf-kd export and timm Hub repos carry), else the architecture's
    default; for a transformers model ``config.image_size`` with ImageNet statistics (logged,
    since the statistics are a guess without an image processor).
    """
    if image_processor is not None:
        return preprocessing_from_image_processor(image_processor)
    if is_timm_model(model):
        pretrained_cfg = getattr(model.config, "pretrained_cfg", None)
        if pretrained_cfg:
            return preprocessing_from_timm_config(pretrained_cfg)
        return preprocessing_from_timm_config(timm.data.resolve_model_data_config(model.timm_model))
    image_size = getattr(model.config, "image_size", None)
    if image_size is None:
        raise ValueError(
            f"{type(model).__name__} has no image processor and no config.image_size: pass the "
            "image processor (AutoImageProcessor.from_pretrained) to know its input size"
        )
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    logger.warning(
        "no image processor for %s: using config.image_size=%s with ImageNet mean/std",
        type(model).__name__,
        size,
    )
    return ImagePreprocessing(image_size=size)
