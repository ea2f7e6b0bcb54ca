"""hf-kd: logit knowledge distillation of image classifiers on the Hugging Face stack."""

from hf_kd.losses import LossOutput, available_losses, build_loss

__version__ = "0.1.0"

__all__ = ["LossOutput", "__version__", "available_losses", "build_loss"]
