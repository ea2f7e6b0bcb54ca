"""Random inputs for the loss tests."""

from __future__ import annotations

import torch

LOSS_NAMES = ("kd", "dkd", "normkd", "normkd_dkd", "rld", "mcld", "hard")


def random_batch(
    num_samples: int,
    num_classes: int,
    *,
    seed: int = 0,
    scale: float = 3.0,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student logits, teacher logits (independent Gaussians) and uniform random labels."""
    generator = torch.Generator().manual_seed(seed)
    student = scale * torch.randn(num_samples, num_classes, generator=generator, dtype=dtype)
    teacher = scale * torch.randn(num_samples, num_classes, generator=generator, dtype=dtype)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    return student, teacher, labels
