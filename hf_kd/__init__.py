"""hf-kd: logit knowledge distillation of image classifiers on the Hugging Face stack.

Importing hf-kd registers its CIFAR ResNets (``cifar_resnet8``, ...) with timm, so a saved
model of one of them loads with timm or transformers after ``import hf_kd``.
"""

from hf_kd import models_cifar  # noqa: F401  (registers the architectures with timm)
from hf_kd.logit_cache import (
    TeacherLogitCache,
    cache_teacher_logits,
    load_teacher_logit_cache,
    with_cached_teacher_logits,
)
from hf_kd.losses import LossOutput, available_losses, build_loss

__version__ = "0.1.0"

__all__ = [
    "LossOutput",
    "TeacherLogitCache",
    "__version__",
    "available_losses",
    "build_loss",
    "cache_teacher_logits",
    "load_teacher_logit_cache",
    "with_cached_teacher_logits",
]
