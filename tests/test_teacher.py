"""The frozen teacher: pixel mapping, input selection, freezing, placement, class checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from distill_helpers import PatternDataset, class_names, tiny_vit
from PIL import Image

from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.teacher import (
    FrozenTeacher,
    PixelMapping,
    check_teacher_matches_student,
    prepare_teacher,
)

STUDENT = ImagePreprocessing((32, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")
PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def normalise(rgb: torch.Tensor, preprocessing: ImagePreprocessing) -> torch.Tensor:
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    return (rgb - mean) / std


def random_rgb(height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3), dtype=np.float32)


def pil_resize(rgb: np.ndarray, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    """PIL's float ("F" mode) resize per channel, as ``[1, 3, h, w]``."""
    channels = [
        np.asarray(
            Image.fromarray(rgb[..., channel], mode="F").resize(
                (size[1], size[0]), PIL_FILTERS[interpolation]
            )
        )
        for channel in range(3)
    ]
    return torch.from_numpy(np.stack(channels))[None]


def test_same_size_mapping_only_renormalises():
    rgb = torch.from_numpy(random_rgb()).permute(2, 0, 1)[None]
    teacher = ImagePreprocessing((32, 32), (0.5, 0.4, 0.3), (0.2, 0.3, 0.4))
    mapped = PixelMapping(STUDENT, teacher)(normalise(rgb, STUDENT))
    torch.testing.assert_close(mapped, normalise(rgb, teacher), rtol=0, atol=1e-5)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(16, 16), (48, 40)])
def test_resize_matches_pil(interpolation, size):
    rgb = random_rgb()
    teacher = ImagePreprocessing(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), interpolation)
    student_batch = normalise(torch.from_numpy(rgb).permute(2, 0, 1)[None], STUDENT)
    mapped = PixelMapping(STUDENT, teacher)(student_batch)
    # PIL float resize (antialiased when downsampling), then the [0, 1] clamp of a real image.
    expected = normalise(pil_resize(rgb, size, interpolation).clamp(0, 1), teacher)
    assert mapped.shape == (1, 3, *size)
    torch.testing.assert_close(mapped, expected, rtol=0, atol=1e-4)


def test_nearest_resize_picks_source_pixels():
    rgb = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4) / 15
    student = ImagePreprocessing((4, 4), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    teacher = ImagePreprocessing((2, 2), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "nearest")
    mapped = PixelMapping(student, teacher)(rgb)
    torch.testing.assert_close(mapped[0, 0], torch.tensor([[0.0, 2.0], [8.0, 10.0]]) / 15)


def test_mapping_rejects_bad_inputs():
    teacher = ImagePreprocessing((16, 16), interpolation="lanczos")
    with pytest.raises(ValueError, match="interpolation 'lanczos' is not supported"):
        PixelMapping(STUDENT, teacher)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        PixelMapping(STUDENT, ImagePreprocessing((16, 16)))(torch.zeros(2, 1, 32, 32))


def test_teacher_maps_the_student_batch_to_its_own_input():
    teacher_model = tiny_vit(image_size=16)
    teacher_preprocessing = ImagePreprocessing((16, 16), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    teacher = FrozenTeacher(teacher_model, teacher_preprocessing, STUDENT)
    assert teacher.maps_student_pixels
    rgb = torch.rand(4, 3, 32, 32)
    batch = {"pixel_values": normalise(rgb, STUDENT)}
    expected_input = PixelMapping(STUDENT, teacher_preprocessing)(batch["pixel_values"])
    with torch.no_grad():
        expected = teacher_model(pixel_values=expected_input).logits
    torch.testing.assert_close(teacher(batch), expected)


def test_teacher_pixel_values_column_wins():
    teacher_model = tiny_vit(image_size=16)
    teacher = FrozenTeacher(teacher_model, ImagePreprocessing((16, 16)), STUDENT)
    given = torch.randn(4, 3, 16, 16)
    batch = {"pixel_values": torch.randn(4, 3, 32, 32), "teacher_pixel_values": given}
    with torch.no_grad():
        expected = teacher_model(pixel_values=given).logits
    torch.testing.assert_close(teacher(batch), expected)


def test_same_preprocessing_passes_the_batch_through():
    teacher_model = tiny_vit()
    teacher = FrozenTeacher(
        teacher_model, ImagePreprocessing((16, 16)), ImagePreprocessing((16, 16))
    )
    assert not teacher.maps_student_pixels
    batch = {"pixel_values": torch.randn(3, 3, 16, 16)}
    assert teacher.teacher_pixel_values(batch) is batch["pixel_values"]


def test_cached_teacher_logits_skip_the_model():
    cached = torch.randn(4, 5, dtype=torch.float16)
    teacher = FrozenTeacher(None)
    logits = teacher({"pixel_values": torch.randn(4, 3, 16, 16), "teacher_logits": cached})
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, cached.float())
    with pytest.raises(ValueError, match="no teacher model was given"):
        teacher({"pixel_values": torch.randn(4, 3, 16, 16)})


def test_unknown_student_preprocessing_is_an_error_only_when_needed():
    teacher = FrozenTeacher(tiny_vit(image_size=16), ImagePreprocessing((16, 16)), None)
    with pytest.raises(ValueError, match="pass student_preprocessing="):
        teacher({"pixel_values": torch.randn(2, 3, 32, 32)})
    given = torch.randn(2, 3, 16, 16)
    assert teacher({"pixel_values": None, "teacher_pixel_values": given}).shape == (2, 5)


def test_teacher_is_frozen_and_stays_in_eval_mode():
    teacher_model = tiny_vit()
    for module in teacher_model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5  # so that training mode would show in the logits
    teacher = FrozenTeacher(teacher_model)
    assert not any(parameter.requires_grad for parameter in teacher_model.parameters())
    assert not teacher_model.training
    teacher_model.train()  # as a stray model.train() elsewhere would
    batch = {"pixel_values": torch.randn(4, 3, 16, 16)}
    first = teacher(batch)
    assert not teacher_model.training
    assert not first.requires_grad
    torch.testing.assert_close(teacher(batch), first)


def test_prepared_teacher_runs_under_the_accelerator_mixed_precision():
    # A Trainer run earlier in this process leaves Accelerate's global state set up
    # without mixed precision, which a new Accelerator may not change.
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = tiny_vit()
    raw_output_dtypes = []
    model.classifier.register_forward_hook(
        lambda module, inputs, output: raw_output_dtypes.append(output.dtype)
    )
    prepared = prepare_teacher(model, accelerator)
    assert not isinstance(prepared, torch.nn.parallel.DistributedDataParallel)
    assert not any(parameter.requires_grad for parameter in prepared.parameters())
    assert next(prepared.parameters()).device.type == accelerator.device.type
    teacher = FrozenTeacher(prepared)
    with accelerator.autocast():
        logits = teacher({"pixel_values": torch.randn(4, 3, 16, 16)})
    assert raw_output_dtypes == [torch.bfloat16]
    assert logits.dtype == torch.float32


def test_class_count_mismatch():
    with pytest.raises(ValueError, match="teacher predicts 5 classes but the student 7"):
        check_teacher_matches_student(tiny_vit(num_labels=5), tiny_vit(num_labels=7))


def test_label_map_mismatch():
    swapped = class_names()
    swapped[0], swapped[1] = swapped[1], swapped[0]
    with pytest.raises(ValueError, match=r"differ at 2 class index\(es\).*0: teacher 'shape_0'"):
        check_teacher_matches_student(tiny_vit(), tiny_vit(id2label=swapped))


def test_matching_or_generic_labels_pass(caplog):
    check_teacher_matches_student(tiny_vit(), tiny_vit(seed=1))
    generic = {index: f"LABEL_{index}" for index in range(5)}
    check_teacher_matches_student(tiny_vit(id2label=generic), tiny_vit(id2label=generic))
    check_teacher_matches_student(tiny_vit(), tiny_vit(id2label=generic))
    assert "only one of teacher and student names its classes" in caplog.text


def test_teacher_logits_can_be_saved_for_the_students_backward():
    """Inference-mode logits are handed out as normal tensors: a loss may multiply them."""
    teacher = FrozenTeacher(tiny_vit(seed=2))
    pixel_values = PatternDataset(4).pixel_values
    teacher_logits = teacher({"pixel_values": pixel_values})
    assert not teacher_logits.is_inference() and not teacher_logits.requires_grad
    student = tiny_vit(seed=1)
    student_logits = student(pixel_values=pixel_values).logits
    # Raises "Inference tensors cannot be saved for backward" unless copied out.
    (student_logits * teacher_logits).sum().backward()
    assert student.classifier.weight.grad.abs().sum() > 0
