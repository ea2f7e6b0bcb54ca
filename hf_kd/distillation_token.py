"""Students with a distillation token (DeiT): detection, both heads' logits, their accuracy.

Touvron et al., "Training data-efficient image transformers & distillation through
attention" (ICML 2021, arXiv 2012.12877). A DeiT student reads two tokens: the class
token's head gives ``z_cls``, the distillation token's head gives ``z_dist``, both
``[N, C]``; its prediction is their average ``z = (z_cls + z_dist) / 2``. hf-kd trains it
with (:meth:`hf_kd.trainer.DistillationTrainer.distillation_objective`)::

    total = ce_weight * CE(z_cls, y) + kd_weight * w(epoch) * loss(z_dist, z_teacher, y)

Two libraries ship such students and both are detected from the model itself:

* timm's ``VisionTransformerDistilled`` (``deit_*_distilled_*``) inside
  ``TimmWrapperForImageClassification``. In train mode with
  ``set_distilled_training(True)`` its forward returns ``(z_cls, z_dist)``; in eval mode it
  returns the average, so evaluation reads the two heads (``get_classifier()``) on the
  forward features itself.
* transformers' ``DeiTForImageClassificationWithTeacher``: its output always has
  ``cls_logits``, ``distillation_logits`` and their average ``logits``.

Saved, both reload with both heads and predict the average (``pipeline`` included).
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.models.deit import VisionTransformerDistilled
from torch import Tensor, nn
from transformers import DeiTForImageClassificationWithTeacher, TimmWrapperForImageClassification
from transformers.utils import ModelOutput

# The per-head top-1 accuracies evaluation reports (eval_<name>), next to eval_accuracy,
# which is the top-1 of the averaged prediction.
CLS_ACCURACY = "cls_accuracy"
DISTILLATION_ACCURACY = "distillation_accuracy"


@dataclass
class DistillationTokenOutput(ModelOutput):
    """Both heads' logits of one forward and their average, the student's prediction."""

    logits: Tensor | None = None
    cls_logits: Tensor | None = None
    distillation_logits: Tensor | None = None


def _timm_distilled(model: nn.Module) -> VisionTransformerDistilled | None:
    if isinstance(model, TimmWrapperForImageClassification) and isinstance(
        model.timm_model, VisionTransformerDistilled
    ):
        return model.timm_model
    return None


def has_distillation_token(model: nn.Module) -> bool:
    """Whether ``model`` (unwrapped) is a student with a distillation head: a wrapped timm
    ``VisionTransformerDistilled`` or a ``DeiTForImageClassificationWithTeacher``."""
    return isinstance(model, DeiTForImageClassificationWithTeacher) or (
        _timm_distilled(model) is not None
    )


def enable_distilled_training(model: nn.Module) -> None:
    """Make a timm distilled student return ``(z_cls, z_dist)`` in train mode
    (``set_distilled_training(True)``); transformers' DeiT needs nothing. Not saved: a
    reloaded student predicts the average."""
    timm_model = _timm_distilled(model)
    if timm_model is not None:
        timm_model.set_distilled_training(True)


def forward_heads(
    model: nn.Module, student: nn.Module, pixel_values: Tensor
) -> DistillationTokenOutput:
    """One forward of a distillation-token student: ``z_cls``, ``z_dist`` and their average.

    ``model`` is what the Trainer passes (possibly wrapped for data parallelism or
    compiled), ``student`` the unwrapped model. Training goes through ``model``; a timm
    student in eval mode averages inside its forward, so there the heads are read from
    ``student``'s forward features (no gradient flows in evaluation).
    """
    timm_model = _timm_distilled(student)
    if timm_model is not None and not timm_model.training:
        features = timm_model.forward_features(pixel_values.to(student.dtype))
        head, head_dist = timm_model.get_classifier()
        return _with_average(head(features[:, 0]), head_dist(features[:, 1]))
    outputs = model(pixel_values=pixel_values)
    if isinstance(outputs.logits, tuple):
        return _with_average(*outputs.logits)
    if getattr(outputs, "distillation_logits", None) is None:
        raise ValueError(
            "the student has a distillation token but its forward returned only the averaged "
            "logits: a timm student needs set_distilled_training(True) "
            "(hf_kd.distillation_token.enable_distilled_training) in train mode"
        )
    return DistillationTokenOutput(
        logits=outputs.logits,
        cls_logits=outputs.cls_logits,
        distillation_logits=outputs.distillation_logits,
    )


def _with_average(cls_logits: Tensor, distillation_logits: Tensor) -> DistillationTokenOutput:
    return DistillationTokenOutput(
        logits=(cls_logits + distillation_logits) / 2,
        cls_logits=cls_logits,
        distillation_logits=distillation_logits,
    )


def head_accuracy_means(
    cls_logits: Tensor, distillation_logits: Tensor, labels: Tensor
) -> dict[str, Tensor]:
    """Each head's top-1 accuracy over one batch, on its device (no host sync):
    ``{cls_accuracy, distillation_accuracy}``."""
    return {
        CLS_ACCURACY: (cls_logits.argmax(dim=1) == labels).float().mean(),
        DISTILLATION_ACCURACY: (distillation_logits.argmax(dim=1) == labels).float().mean(),
    }
