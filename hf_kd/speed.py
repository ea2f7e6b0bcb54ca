"""Measured inference latency of a teacher and its student, for model cards.

A benchmarking helper: the numbers depend on the machine and its load, so they are reported
(with the device, batch size and thread count they were taken with), never asserted on.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class InferenceSpeed:
    """Median forward latency of teacher and student on the same batch of images.

    ``speedup = teacher_latency_ms / student_latency_ms``.
    """

    teacher_latency_ms: float
    student_latency_ms: float
    batch_size: int
    device: str
    num_threads: int

    @property
    def speedup(self) -> float:
        return self.teacher_latency_ms / self.student_latency_ms


def measure_latency_ms(
    model: nn.Module, pixel_values: Tensor, *, repeats: int = 10, warmup: int = 2
) -> float:
    """Median wall time in milliseconds of ``model(pixel_values=...)`` in eval mode, no grad.

    The model's training/eval mode is restored afterwards. On CUDA the device is synchronised
    around each call so that the time covers the whole forward pass.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    was_training = model.training
    model.eval()
    timings = []
    try:
        with torch.inference_mode():
            for index in range(warmup + repeats):
                _synchronize(pixel_values.device)
                start = time.perf_counter()
                model(pixel_values=pixel_values)
                _synchronize(pixel_values.device)
                if index >= warmup:
                    timings.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
    return statistics.median(timings)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_inference_speed(
    teacher: nn.Module,
    student: nn.Module,
    student_pixel_values: Tensor,
    teacher_pixel_values: Tensor | None = None,
    *,
    repeats: int = 10,
    warmup: int = 2,
) -> InferenceSpeed:
    """Time teacher and student on one batch; each at its own resolution when they differ.

    ``teacher_pixel_values`` defaults to ``student_pixel_values`` (same input size). Both
    models and tensors must already be on the device to measure (the card reports it).
    """
    teacher_inputs = student_pixel_values if teacher_pixel_values is None else teacher_pixel_values
    if teacher_inputs.shape[0] != student_pixel_values.shape[0]:
        raise ValueError("teacher and student batches must have the same number of images")
    return InferenceSpeed(
        teacher_latency_ms=measure_latency_ms(
            teacher, teacher_inputs, repeats=repeats, warmup=warmup
        ),
        student_latency_ms=measure_latency_ms(
            student, student_pixel_values, repeats=repeats, warmup=warmup
        ),
        batch_size=int(student_pixel_values.shape[0]),
        device=str(student_pixel_values.device),
        num_threads=torch.get_num_threads(),
    )
