"""hf-kd: logit knowledge distillation of image classifiers on the Hugging Face stack."""

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
