"""Plain-Python float64 maths for hand-derived reference values (no torch, no hf_kd)."""

from __future__ import annotations

import math

import torch


def as_rows(tensor: torch.Tensor) -> list[list[float]]:
    """A 2-D tensor as nested Python floats."""
    return tensor.detach().double().tolist()


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(value - top) for value in values]
    total = sum(exps)
    return [value / total for value in exps]


def log_sum_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(value - top) for value in values))


def kl(p: list[float], q: list[float]) -> float:
    """``sum_k p_k (log p_k - log q_k)`` with ``0 log 0 = 0``."""
    return sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q, strict=True) if pk > 0)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def std_unbiased(values: list[float]) -> float:
    centre = mean(values)
    return math.sqrt(sum((value - centre) ** 2 for value in values) / (len(values) - 1))


def standardize(values: list[float]) -> list[float]:
    """Logit standardisation: ``(z - mean) / (1e-7 + unbiased std)``."""
    centre, spread = mean(values), std_unbiased(values)
    return [(value - centre) / (1e-7 + spread) for value in values]


def scaled(values: list[float], divisor: float) -> list[float]:
    return [value / divisor for value in values]
