"""The frozen teacher: its own inputs, its placement by Accelerate, its forward pass.

The teacher is never part of the student's module tree (so never in a checkpoint), never
trained and never wrapped in DDP. :class:`FrozenTeacher` turns a student batch into float32
teacher logits, taking, in order of preference, cached ``teacher_logits``, a
``teacher_pixel_values`` column, or the student's ``pixel_values`` mapped on the device to
the teacher's resolution and normalisation. It runs the teacher under
``torch.inference_mode``: no autograd graph, no version counters, nothing kept for a backward.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import DistributedType, is_compiled_module
from torch import Tensor, nn

from hf_kd.preprocessing import (
    TENSOR_INTERPOLATIONS,
    ImagePreprocessing,
    channel_tensor,
    resize_rgb,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)


class PixelMapping:
    """Re-express a batch normalised for one model as the input of another, on the device.

    ``rgb = x * std_s + mean_s``; ``rgb`` resized to the target size with the target's
    interpolation (antialiased, like PIL, when bilinear or bicubic; bicubic overshoot is
    clamped back to ``[0, 1]``); ``x_t = (rgb - mean_t) / std_t``. The teacher thus sees the
    student's own augmented view of each image.
    """

    def __init__(self, source: ImagePreprocessing, target: ImagePreprocessing):
        if target.interpolation not in TENSOR_INTERPOLATIONS:
            raise ValueError(
                f"teacher interpolation {target.interpolation!r} is not supported on the device; "
                f"choose one of {TENSOR_INTERPOLATIONS}"
            )
        self.source = source
        self.target = target

    def _channel_statistics(self, like: Tensor) -> tuple[Tensor, ...]:
        values = (self.source.mean, self.source.std, self.target.mean, self.target.std)
        return tuple(channel_tensor(tuple(value), like.device, like.dtype) for value in values)

    def __call__(self, pixel_values: Tensor) -> Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values must be [B, 3, H, W], got shape {tuple(pixel_values.shape)}"
            )
        source_mean, source_std, target_mean, target_std = self._channel_statistics(pixel_values)
        rgb = pixel_values * source_std + source_mean
        rgb = resize_rgb(rgb, self.target.image_size, self.target.interpolation)
        return (rgb - target_mean) / target_std


def freeze(model: nn.Module) -> nn.Module:
    """``requires_grad_(False)`` and eval mode, in place."""
    model.requires_grad_(False)
    return model.eval()


class FrozenTeacher:
    """A frozen teacher that produces float32 logits for a student batch.

    Deliberately not an ``nn.Module``: it can never be registered inside the student, so the
    teacher's weights never reach the student's ``state_dict`` or checkpoints.

    Args:
        model: the teacher (a ``PreTrainedModel`` called as ``model(pixel_values=...)``),
            possibly already placed by :func:`prepare_teacher`; ``None`` when every batch
            carries cached ``teacher_logits``.
        preprocessing: the input the teacher expects; ``None`` = the student's.
        student_preprocessing: how the batch's ``pixel_values`` were made; needed only when
            the two differ and the batch has no ``teacher_pixel_values``.
        inference_mode: run the teacher under ``torch.inference_mode``; ``False`` uses
            ``torch.no_grad``, for teachers sharded by FSDP or DeepSpeed, whose parameter
            gathering is not supported in inference mode.
    """

    def __init__(
        self,
        model: nn.Module | None,
        preprocessing: ImagePreprocessing | None = None,
        student_preprocessing: ImagePreprocessing | None = None,
        *,
        inference_mode: bool = True,
    ):
        self.model = freeze(model) if model is not None else None
        self.inference_mode = inference_mode
        self.preprocessing = preprocessing
        self.student_preprocessing = student_preprocessing
        self.pixel_mapping = (
            PixelMapping(student_preprocessing, preprocessing)
            if preprocessing is not None
            and student_preprocessing is not None
            and preprocessing != student_preprocessing
            else None
        )

    @property
    def maps_student_pixels(self) -> bool:
        """Whether the student's pixels are resized/re-normalised before the teacher."""
        return self.pixel_mapping is not None

    def teacher_pixel_values(self, batch: Mapping[str, Any]) -> Tensor:
        """The teacher's input: ``teacher_pixel_values`` if given, else the mapped student's."""
        provided = batch.get("teacher_pixel_values")
        if provided is not None:
            return provided
        if self.pixel_mapping is not None:
            return self.pixel_mapping(batch["pixel_values"])
        if self.preprocessing is not None and self.student_preprocessing is None:
            raise ValueError(
                "the teacher has its own preprocessing but the student's is unknown, so the "
                "student's pixel_values cannot be mapped to the teacher: pass "
                "student_preprocessing= to the trainer, or give the dataset a "
                "teacher_pixel_values column"
            )
        return batch["pixel_values"]

    def __call__(self, batch: Mapping[str, Any]) -> Tensor:
        """Float32 teacher logits ``[B, C]`` for ``batch``, computed without gradients."""
        cached = batch.get("teacher_logits")
        if cached is not None:
            return cached.detach().float()
        if self.model is None:
            raise ValueError(
                "no teacher model was given and the batch has no teacher_logits column: pass "
                "teacher_model= to the trainer or cache the teacher's logits in the dataset"
            )
        # Cheap re-assertion: nothing should put the teacher in training mode, but if a
        # callback or user code does, dropout and batch statistics would silently change.
        if self.model.training:
            self.model.eval()
        grad_free = torch.inference_mode() if self.inference_mode else torch.no_grad()
        with grad_free:
            output = self.model(pixel_values=self.teacher_pixel_values(batch))
        logits = output.logits if hasattr(output, "logits") else output
        # Copied out of inference mode into a normal tensor: an inference tensor cannot be
        # saved for the student's backward (a loss multiplying student by teacher logits).
        return logits.to(torch.float32, copy=self.inference_mode)


def prepare_teacher(
    model: nn.Module,
    accelerator: Accelerator,
    *,
    channels_last: bool = False,
    compile_options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Place a frozen teacher the way TRL places reference models, for inference only.

    * DeepSpeed: its own inference engine; ZeRO-3 shards it like the student, any other
      stage replicates it (stage 0).
    * FSDP: sharded like the student (FSDP1 wrapper or FSDP2 ``fully_shard``), eval mode.
    * Otherwise: ``accelerator.prepare_model(evaluation_mode=True)``: moved to the device,
      its forward autocast to the run's mixed precision with outputs upcast to float32, and
      never wrapped in DDP (it has no gradients to synchronise).

    ``channels_last`` converts its 4-D weights to that memory format first. The placed
    teacher is compiled with ``torch.compile(**compile_options)`` when they are given, and
    left eager otherwise: Accelerate compiles every model it prepares when the student is
    compiled (``--torch_compile``), and that compile is undone here, so the teacher's
    compilation is chosen on its own (``--teacher_torch_compile``).

    The DeepSpeed and FSDP branches need GPUs and are not exercised by the CPU test suite.
    """
    freeze(model)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        prepared = _prepare_deepspeed(model, accelerator)
    elif accelerator.distributed_type == DistributedType.FSDP:
        prepared = _prepare_fsdp(model, accelerator)
    else:
        prepared = accelerator.prepare_model(model, evaluation_mode=True)
    if is_compiled_module(prepared):
        # Accelerate's own compile, with the student's settings.
        prepared = prepared._orig_mod
    if compile_options is None:
        return prepared
    return torch.compile(prepared, **compile_options)


def _hidden_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return max(sizes)
    return getattr(config, "hidden_size", None)


def _prepare_deepspeed(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage") == 3:
        hidden_size = _hidden_size(model)
        if hidden_size is not None:
            # Bucket sizes scaled to the model, as DeepSpeed recommends for inference engines.
            zero["reduce_bucket_size"] = hidden_size * hidden_size
            zero["stage3_param_persistence_threshold"] = 10 * hidden_size
            zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden_size * hidden_size)
    else:
        zero["stage"] = 0
    engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine.eval()


def _prepare_fsdp(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    if accelerator.is_fsdp2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return fsdp2_prepare_model(accelerator, model).eval()
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(model, FullyShardedDataParallel):
        return model.eval()
    plugin = accelerator.state.fsdp_plugin
    plugin.set_auto_wrap_policy(model)
    # The student's sharding, precision and prefetch settings; the training-only ones
    # (backward prefetch, ignored modules, meta-device init) do not apply to a frozen teacher
    # loaded on every rank.
    wrapped = FullyShardedDataParallel(
        model,
        sharding_strategy=plugin.sharding_strategy or plugin.reshard_after_forward,
        cpu_offload=plugin.cpu_offload,
        auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        sync_module_states=plugin.sync_module_states,
        forward_prefetch=plugin.forward_prefetch,
        use_orig_params=plugin.use_orig_params,
        limit_all_gathers=plugin.limit_all_gathers,
        device_id=accelerator.device,
    )
    return wrapped.eval()


def check_teacher_matches_student(teacher: nn.Module, student: nn.Module) -> None:
    """Raise ``ValueError`` when the two models do not predict the same classes.

    Compares their configs' label maps with :func:`check_same_classes`; a model without a
    config is not checked.
    """
    teacher_config = getattr(teacher, "config", None)
    student_config = getattr(student, "config", None)
    if teacher_config is None or student_config is None:
        return
    check_same_classes(teacher_config.id2label, student_config.id2label)


def check_same_classes(
    teacher_id2label: Mapping[int, str], student_id2label: Mapping[int, str]
) -> None:
    """Raise ``ValueError`` unless teacher and student logit ``c`` mean the same class.

    Compares the number of classes (the logit width) and, when both maps name their classes
    (not the generic ``LABEL_i``), the names index by index. Used for a live teacher and for
    the teacher recorded in a logit cache.
    """
    if len(teacher_id2label) != len(student_id2label):
        raise ValueError(
            f"the teacher predicts {len(teacher_id2label)} classes but the student "
            f"{len(student_id2label)}: build the student with num_labels="
            f"{len(teacher_id2label)} and the teacher's id2label/label2id"
        )
    teacher_labels = _class_names(teacher_id2label)
    student_labels = _class_names(student_id2label)
    if teacher_labels is None or student_labels is None:
        if teacher_labels != student_labels:
            logger.warning(
                "only one of teacher and student names its classes; assuming both use the "
                "same class order"
            )
        return
    differing = [
        index for index in teacher_labels if teacher_labels[index] != student_labels.get(index)
    ]
    if differing:
        examples = ", ".join(
            f"{index}: teacher {teacher_labels[index]!r} vs student {student_labels.get(index)!r}"
            for index in differing[:3]
        )
        raise ValueError(
            f"teacher and student label maps differ at {len(differing)} class index(es) "
            f"({examples}); build the student with the teacher's id2label/label2id so that "
            "logit c means the same class in both"
        )


def _class_names(id2label: Mapping[int, str]) -> dict[int, str] | None:
    """``{index: name}``, or ``None`` for transformers' generic ``LABEL_i`` names."""
    names = {int(index): str(name) for index, name in id2label.items()}
    if all(name == f"LABEL_{index}" for index, name in names.items()):
        return None
    return names
