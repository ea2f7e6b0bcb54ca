"""The lean training step: no host sync after the first step, one forward per model and
micro-batch, the teacher in inference mode, channels_last and torch.compile for both models.

Host syncs are found by :func:`hf_kd.host_sync.record_host_syncs`, a ``TorchDispatchMode``
that sees every ATen call of the real Trainer step (nothing is mocked).
"""

from __future__ import annotations

import pytest
import torch
from accelerate.utils import is_compiled_module
from distill_helpers import (
    PatternDataset,
    make_args,
    sharpened,
    tiny_deit,
    tiny_timm,
    tiny_timm_deit,
    tiny_vit,
)
from transformers import TimmWrapperForImageClassification, TrainerCallback

from hf_kd.data import DecodedImages, DecodedSplit, collate_decoded_batch
from hf_kd.host_sync import HostSync, HostSyncRecorder
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.trainer import DistillationTrainer

STUDENT_16 = ImagePreprocessing((16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")
TEACHER_8 = ImagePreprocessing((8, 8), (0.4, 0.4, 0.4), (0.3, 0.3, 0.3), "bilinear")
MAPPED = {"student_preprocessing": STUDENT_16, "teacher_preprocessing": TEACHER_8}


class HostSyncsPerStep(TrainerCallback):
    """The host syncs of each optimizer step, from ``on_step_begin`` to ``on_step_end``.

    That window holds every micro-batch's ``training_step`` (inputs to the device, student
    and teacher forwards, the loss, backward), gradient clipping, the optimizer and
    learning-rate scheduler steps and ``zero_grad``; logging comes after it.
    """

    def __init__(self) -> None:
        self.steps: list[list[HostSync]] = []
        self._recorder: HostSyncRecorder | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._recorder = HostSyncRecorder()
        self._recorder.__enter__()
        self.steps.append(self._recorder.syncs)

    def on_step_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.__exit__(None, None, None)
            self._recorder = None


def train_recording_syncs(trainer: DistillationTrainer) -> list[list[HostSync]]:
    recorder = HostSyncsPerStep()
    trainer.add_callback(recorder)
    try:
        trainer.train()
    finally:
        recorder.close()
    return recorder.steps


def describe(syncs: list[HostSync]) -> str:
    return "\n".join(map(str, syncs))


def lean_step_trainer(tmp_path, setting: str, **overrides) -> DistillationTrainer:
    """A trainer over 4 optimizer steps of 2 micro-batches, with gradient clipping, the
    default fused AdamW and a warm-up scheduler, in one of three settings."""
    values = {
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "logging_steps": 2,
        "warmup_steps": 1,
        "max_grad_norm": 1.0,
        "logit_standardization": True,
        **overrides,
    }
    if setting == "mapped":
        return DistillationTrainer(
            model=tiny_vit(seed=1),
            teacher_model=tiny_vit(image_size=8, seed=2),
            args=make_args(tmp_path, **values),
            train_dataset=PatternDataset(32),
            **MAPPED,
        )
    if setting in ("timm_deit_token", "deit_token"):
        make_student = tiny_timm_deit if setting == "timm_deit_token" else tiny_deit
        return DistillationTrainer(
            model=make_student(seed=1),
            teacher_model=tiny_vit(seed=2),
            args=make_args(tmp_path, **values),
            train_dataset=PatternDataset(32),
        )
    if setting == "decoded":
        # uint8 views of 16x16: shifted, flipped, normalised, resized for the teacher in the step
        patterns = (PatternDataset(32).pixel_values * 40 + 128).clamp(0, 255).to(torch.uint8)
        decoded = DecodedSplit(patterns, torch.arange(32) % 5, torch.arange(32))
        return DistillationTrainer(
            model=tiny_vit(seed=1),
            teacher_model=tiny_vit(image_size=8, seed=2),
            args=make_args(tmp_path, **values),
            train_dataset=DecodedImages(decoded, train=True, augment="default"),
            data_collator=collate_decoded_batch,
            **MAPPED,
        )
    if setting == "cached":
        cached_logits = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
        return DistillationTrainer(
            model=tiny_vit(seed=1),
            args=make_args(tmp_path, **values),
            train_dataset=PatternDataset(32, extra_columns={"teacher_logits": cached_logits}),
        )
    return DistillationTrainer(
        model=tiny_timm("test_resnet", seed=1),
        teacher_model=tiny_timm("test_resnet", seed=2),
        args=make_args(tmp_path, channels_last=True, **values),
        train_dataset=PatternDataset(32),
    )


@pytest.mark.parametrize(
    "setting", ["mapped", "decoded", "cached", "channels_last_cnn", "timm_deit_token", "deit_token"]
)
def test_no_host_sync_after_the_first_step(tmp_path, setting):
    trainer = lean_step_trainer(tmp_path, setting)
    first, *later = train_recording_syncs(trainer)
    assert len(later) == 3
    # The first step validates labels and logits once: the recorder sees it there ...
    assert first and all("check_logits_and_labels" in sync.stack for sync in first), describe(first)
    # ... and then no step waits for the device until the loop logs.
    for step, syncs in enumerate(later, start=2):
        assert syncs == [], f"host syncs in step {step}:\n{describe(syncs)}"
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]


def test_the_trainers_own_nan_filter_would_sync_every_step(tmp_path):
    """The recorder's window covers the Trainer's loop: its opt-in per-step loss check shows."""
    trainer = lean_step_trainer(tmp_path, "cached", logging_nan_inf_filter=True)
    _, *later = train_recording_syncs(trainer)
    for syncs in later:
        assert syncs and all("_run_epoch" in sync.stack for sync in syncs), describe(syncs)


class ForwardRecorder:
    """Per call of a model's forward: grad mode, inference mode and the input's layout."""

    def __init__(self, model: torch.nn.Module):
        self.calls: list[dict[str, bool]] = []
        self.handle = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        pixel_values = kwargs["pixel_values"]
        self.calls.append(
            {
                "grad_enabled": torch.is_grad_enabled(),
                "inference_mode": torch.is_inference_mode_enabled(),
                "channels_last": pixel_values.is_contiguous(memory_format=torch.channels_last),
            }
        )


@pytest.mark.parametrize("cached", [False, True], ids=["live", "cached"])
def test_one_student_forward_and_one_teacher_forward_per_micro_batch(tmp_path, cached):
    student, teacher = tiny_vit(seed=1), tiny_vit(image_size=8, seed=2)
    student_calls, teacher_calls = ForwardRecorder(student), ForwardRecorder(teacher)
    extra_columns = {"teacher_logits": torch.randn(16, 5)} if cached else None
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(
            tmp_path, max_steps=2, per_device_train_batch_size=4, gradient_accumulation_steps=2
        ),
        train_dataset=PatternDataset(16, extra_columns=extra_columns),
        **MAPPED,
    )
    trainer.train()
    assert len(student_calls.calls) == 4
    assert all(call["grad_enabled"] for call in student_calls.calls)
    if cached:
        assert teacher_calls.calls == []  # cached logits: the teacher never runs
        return
    assert len(teacher_calls.calls) == 4
    assert all(call["inference_mode"] for call in teacher_calls.calls)


def conv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [parameter for parameter in model.parameters() if parameter.ndim == 4]


def train_cnn_pair(tmp_path, **overrides) -> tuple[DistillationTrainer, dict[str, list]]:
    student = tiny_timm("test_resnet", seed=1)
    teacher = tiny_timm("test_resnet", seed=2)
    recorders = {"student": ForwardRecorder(student), "teacher": ForwardRecorder(teacher)}
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        # SGD: weight differences stay proportional to gradient differences (Adam would
        # blow up rounding noise in near-zero gradients to a full step).
        args=make_args(tmp_path / "run", max_steps=3, optim="sgd", **overrides),
        train_dataset=PatternDataset(24),
        **MAPPED,
    )
    trainer.train()
    return trainer, {name: recorder.calls for name, recorder in recorders.items()}


def losses(trainer: DistillationTrainer) -> list[float]:
    """``ce_loss`` and ``kd_loss`` of every training log, in order."""
    return [
        entry[name]
        for entry in trainer.state.log_history
        if "loss" in entry
        for name in ("ce_loss", "kd_loss")
    ]


def test_channels_last_for_student_teacher_and_batches(tmp_path):
    reference, reference_calls = train_cnn_pair(tmp_path / "contiguous")
    assert not any(call["channels_last"] for call in reference_calls["student"])
    trainer, calls = train_cnn_pair(tmp_path / "channels_last", channels_last=True)
    for model in (trainer.model, trainer.teacher.model):
        weights = conv_weights(model)
        assert weights
        assert all(weight.is_contiguous(memory_format=torch.channels_last) for weight in weights)
    # The student's batch and the teacher's (resized and re-normalised) batch.
    for name in ("student", "teacher"):
        assert calls[name] and all(call["channels_last"] for call in calls[name]), name
    # The same model in another layout: the same losses and weights.
    assert losses(trainer) == pytest.approx(losses(reference), rel=1e-4)
    for trained, expected in zip(
        trainer.model.state_dict().values(), reference.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(trained, expected, rtol=1e-4, atol=1e-5)
    # A channels_last student saves and reloads like any other.
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = TimmWrapperForImageClassification.from_pretrained(str(tmp_path / "saved"))
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, trainer.model.state_dict()[name], rtol=0, atol=0)


def compiled_frames() -> int:
    return sum(torch._dynamo.utils.counters["frames"].values())


@pytest.mark.parametrize("compiled", ["teacher", "student"])
def test_torch_compile_of_teacher_and_student(tmp_path, compiled):
    """The aot_eager backend runs TorchDynamo and AOTAutograd without inductor's C++ build."""
    reference, _ = train_cnn_pair(tmp_path / "eager")
    flags = {
        "teacher": {"teacher_torch_compile_backend": "aot_eager"},
        "student": {"torch_compile_backend": "aot_eager"},
    }[compiled]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    trainer, _ = train_cnn_pair(tmp_path / "compiled", **flags)
    assert compiled_frames() > 0
    # Accelerate would compile the teacher along with the student; only the flag decides.
    assert is_compiled_module(trainer.teacher.model) == (compiled == "teacher")
    assert is_compiled_module(trainer.model_wrapped) == (compiled == "student")
    assert losses(trainer) == pytest.approx(losses(reference), rel=1e-5)


@pytest.mark.slow
def test_inductor_compiles_teacher_and_student(tmp_path):
    """inductor on CPU: generated C++ kernels (gcc), compared with the eager run."""
    results = []
    for flags in ({}, {"torch_compile": True, "teacher_torch_compile": True}):
        torch._dynamo.reset()
        trainer = DistillationTrainer(
            model=tiny_vit(seed=1),
            teacher_model=sharpened(tiny_vit(seed=2), 10.0),
            args=make_args(tmp_path, max_steps=2, **flags),
            train_dataset=PatternDataset(16),
        )
        trainer.train()
        results.append(trainer)
    eager, compiled = results
    assert compiled.args.torch_compile_backend == "inductor"
    assert is_compiled_module(compiled.teacher.model)
    assert is_compiled_module(compiled.model_wrapped)
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-4)
