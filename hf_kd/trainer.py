"""``DistillationTrainer``: transformers' ``Trainer`` with a frozen teacher.

Per micro-batch the student is trained on (spec section A)::

    total = ce_weight * CE(student_logits, y) + kd_weight * w(epoch) * distillation_loss

with ``w`` the outer warm-up and ``epoch`` the 1-based fractional epoch read from the
Trainer state, so a resumed run keeps the schedule. The teacher is frozen, in eval mode,
outside the student's module tree and placed by Accelerate for inference only
(:func:`hf_kd.teacher.prepare_teacher`).

Gradient accumulation: ``compute_loss`` returns a per-micro-batch mean and the class sets
``loss_is_scaled_for_ga = False``, so ``training_step`` divides it by the number of
accumulated micro-batches and GA=k over batches of B equals one batch of k*B for any
student. transformers 5.23 would otherwise decide from the student's ``forward(**kwargs)``
that the loss is already normalised by ``num_items_in_batch`` (true for its own
``ForImageClassification`` losses, false for a custom ``compute_loss``): for a ViT student
the loss and gradients came out k times too large. ``model_accepts_loss_kwargs`` is set to
False as well, so the Trainer does not count (and, across processes, all-gather) labels
for a ``num_items_in_batch`` that this loss does not use.

Checkpoints: the student alone is saved (the teacher is not in its module tree); on
resume and ``load_best_model_at_end`` it is reloaded through ``from_pretrained``, because
transformers 5.23's plain ``load_state_dict`` misses the legacy key names that
``save_pretrained`` writes for ViT and silently leaves those layers untrained.

A lean step: after the first, a training step never waits for the device. It keeps
``ce_loss``, ``kd_loss``, every loss term (``kd_loss/<term>``), the warm-up factor
``kd_warmup_factor`` and counts of non-finite logits as device tensors;
:meth:`DistillationTrainer.log` averages them over micro-batches and processes once per log
(the only host read) and raises ``ValueError`` if anything was NaN/inf, naming the teacher
or the student. The first training step validates its inputs (label range, finite logits)
with one host sync. The Trainer's own per-step read of the loss (``logging_nan_inf_filter``)
is off by default in :class:`hf_kd.arguments.DistillationArguments`, and the default fused
AdamW reads nothing either (``tests/test_lean_step.py`` checks all this with
:func:`hf_kd.host_sync.record_host_syncs`). The student runs one forward per micro-batch, the
teacher one under ``torch.inference_mode`` (none with cached logits). ``--channels_last``
puts both models and the image batches in NHWC layout; ``--torch_compile`` compiles the
student and ``--teacher_torch_compile`` the teacher, each on its own. The reporting
integrations show the training keys under ``train/`` and the evaluation ones under ``eval/``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import Tensor, nn
from transformers import EvalPrediction, PreTrainedModel, Trainer
from transformers.trainer_utils import EvalLoopOutput

from hf_kd.arguments import DistillationArguments
from hf_kd.losses import build_loss
from hf_kd.losses._common import check_logits_and_labels
from hf_kd.metrics import compute_accuracy_metrics, top_k_class_indices
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.teacher import FrozenTeacher, check_teacher_matches_student, prepare_teacher

logger = logging.getLogger(__name__)

NONFINITE_STUDENT = "nonfinite_student_logits"
NONFINITE_TEACHER = "nonfinite_teacher_logits"
IMAGE_COLUMNS = ("pixel_values", "teacher_pixel_values")


class RunningMeans:
    """Sums of logged scalars kept on the device; averaged only when read.

    ``add`` never synchronises with the host. ``pop_means`` averages over the micro-batches
    added since the last read and over processes (one all-reduce), then resets.
    """

    def __init__(self) -> None:
        self._sums: dict[str, Tensor | float] = {}
        self._count = 0

    def __bool__(self) -> bool:
        return self._count > 0

    def add(self, values: Mapping[str, Tensor | float]) -> None:
        for name, value in values.items():
            if isinstance(value, Tensor):
                value = value.detach().float()
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._count += 1

    def reset(self) -> None:
        self._sums = {}
        self._count = 0

    def pop_means(self, accelerator: Accelerator) -> dict[str, float]:
        """Mean per name over micro-batches and processes. Collective: call on every rank."""
        names = sorted(self._sums)
        sums = torch.stack(
            [
                torch.as_tensor(self._sums[name], dtype=torch.float32, device=accelerator.device)
                for name in names
            ]
        )
        means = accelerator.reduce(sums / self._count, reduction="mean").tolist()
        self.reset()
        return dict(zip(names, means, strict=True))


class DistillationTrainer(Trainer):
    """Distil a frozen teacher into the student ``model`` with transformers' Trainer.

    Args:
        model: the student (a ``PreTrainedModel``, called as ``model(pixel_values=...)``).
        teacher_model: the teacher; frozen here and placed by Accelerate. ``None`` only when
            every batch carries cached ``teacher_logits``.
        args: :class:`hf_kd.arguments.DistillationArguments`.
        student_preprocessing: how the batches' ``pixel_values`` were normalised and sized.
        teacher_preprocessing: the teacher's own input; the ``--teacher_image_*`` flags
            override it. When it differs from the student's, the student's batch is resized
            and re-normalised on the device (unless the batch has ``teacher_pixel_values``).
        compute_metrics: defaults to top-1 ``accuracy`` and ``top5_accuracy`` (numpy).

    Batches are dicts with ``pixel_values`` ``[B, 3, H, W]`` and ``labels`` ``[B]`` int64,
    optionally ``teacher_pixel_values`` and ``teacher_logits``. Evaluation reports the
    student's accuracy, top-5 accuracy and plain cross-entropy (``eval_loss``) without
    running the teacher, unless ``args.eval_with_teacher``.
    """

    # compute_loss returns a per-micro-batch mean: training_step divides it by the number of
    # accumulated micro-batches (see the module docstring).
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        teacher_model: PreTrainedModel | nn.Module | None = None,
        args: DistillationArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        student_preprocessing: ImagePreprocessing | None = None,
        teacher_preprocessing: ImagePreprocessing | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        preprocess_logits_for_metrics: Callable[[Tensor, Tensor], Tensor] | None = None,
        **kwargs: Any,
    ):
        if not isinstance(args, DistillationArguments):
            raise ValueError(
                "DistillationTrainer needs args=DistillationArguments(...) (hf_kd.arguments), "
                f"got {type(args).__name__}"
            )
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "DistillationTrainer computes its own loss; choose it with "
                "--distillation_method and --loss_kwargs instead of compute_loss_func"
            )
        if compute_metrics is None:
            compute_metrics = compute_accuracy_metrics
            if preprocess_logits_for_metrics is None:
                preprocess_logits_for_metrics = top_k_class_indices
        if model is not None and args.channels_last:
            model.to(memory_format=torch.channels_last)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            **kwargs,
        )
        self.model_accepts_loss_kwargs = False
        if teacher_model is not None:
            check_teacher_matches_student(teacher_model, self.model)
        self.objective = args.resolve_objective()
        # Values are checked on the first step and at log time, not by a sync in every step.
        self.distillation_loss = build_loss(
            self.objective.method, **self.objective.loss_kwargs, check_values=False
        ).to(self.args.device)
        if teacher_model is not None:
            teacher_model = prepare_teacher(
                teacher_model,
                self.accelerator,
                channels_last=args.channels_last,
                compile_options=args.resolve_teacher_compile(),
            )
        self.teacher = FrozenTeacher(
            teacher_model,
            preprocessing=args.resolve_teacher_preprocessing(
                teacher_preprocessing or student_preprocessing
            ),
            student_preprocessing=student_preprocessing,
            # FSDP and DeepSpeed gather sharded parameters, which inference mode does not allow.
            inference_mode=not (self.is_fsdp_enabled or self.is_deepspeed_enabled),
        )
        if self.teacher.maps_student_pixels:
            logger.info(
                "the student's batches are mapped to the teacher's preprocessing on the device: "
                "%s -> %s",
                student_preprocessing,
                self.teacher.preprocessing,
            )
        self._train_means = RunningMeans()
        self._eval_means = RunningMeans()
        self._inputs_validated = False

    # ---- inputs and models ----

    def call_model_init(self, trial: Any = None) -> nn.Module:
        model = super().call_model_init(trial)
        if self.args.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """On the device; image batches in channels_last when ``args.channels_last``."""
        inputs = super()._prepare_inputs(inputs)
        if self.args.channels_last:
            for name in IMAGE_COLUMNS:
                if isinstance(inputs.get(name), Tensor) and inputs[name].ndim == 4:
                    inputs[name] = inputs[name].contiguous(memory_format=torch.channels_last)
        return inputs

    # ---- the objective ----

    def current_epoch(self) -> float:
        """The 1-based fractional epoch of the next optimizer step, from the Trainer state."""
        return (self.state.epoch or 0.0) + 1.0

    def distillation_objective(
        self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        """``total = ce_weight * CE + kd_weight * w(epoch) * loss`` and its logged parts.

        The logged parts: ``ce_loss``, ``kd_loss`` (the distillation loss alone),
        ``kd_loss/<term>`` for every term and ``kd_warmup_factor`` (``w``). CE takes the raw
        student logits in float32 and ``--label_smoothing_factor`` (0 by default, as in the
        official code); the loss gets the 1-based fractional epoch (MCLD's category warm-up).
        """
        epoch = self.current_epoch()
        warmup_factor = self.objective.kd_warmup_factor(epoch)
        ce_loss = F.cross_entropy(
            student_logits.float(), labels, label_smoothing=self.args.label_smoothing_factor
        )
        distillation = self.distillation_loss(student_logits, teacher_logits, labels, epoch=epoch)
        total = (
            self.objective.ce_weight * ce_loss
            + self.objective.kd_weight * warmup_factor * distillation.loss
        )
        logged: dict[str, Tensor | float] = {
            "ce_loss": ce_loss,
            "kd_loss": distillation.loss,
            "kd_warmup_factor": warmup_factor,
        }
        logged.update({f"kd_loss/{name}": value for name, value in distillation.terms.items()})
        return total, logged

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """The distillation objective of one micro-batch, a mean over its samples.

        ``num_items_in_batch`` is not used: the Trainer divides this mean by the number of
        accumulated micro-batches (``loss_is_scaled_for_ga = False``).
        """
        labels = inputs["labels"]
        # The teacher first: its activations are freed before the student's, which the
        # backward needs, are allocated, so the two never add up at the memory peak.
        with self.accelerator.autocast():
            teacher_logits = self.teacher(inputs)
        student_outputs = model(pixel_values=inputs["pixel_values"])
        student_logits = student_outputs.logits
        if not self._inputs_validated:
            # One host sync on the first step: label range and finite logits. Later steps
            # count non-finite logits on the device and log() checks them.
            check_logits_and_labels(student_logits, teacher_logits, labels, check_values=True)
            self._inputs_validated = True
        total, logged = self.distillation_objective(student_logits, teacher_logits, labels)
        logged[NONFINITE_STUDENT] = (~torch.isfinite(student_logits.detach())).sum()
        logged[NONFINITE_TEACHER] = (~torch.isfinite(teacher_logits)).sum()
        self._train_means.add(logged)
        return (total, student_outputs) if return_outputs else total

    # ---- evaluation ----

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """The student's logits and plain cross-entropy; the teacher only if
        ``args.eval_with_teacher``."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        with torch.no_grad():
            # Explicit autocast: before train() the student has not been prepared by
            # Accelerate, so its forward is not yet wrapped in the run's mixed precision.
            with self.accelerator.autocast():
                student_logits = model(pixel_values=inputs["pixel_values"]).logits
            student_logits = student_logits.float()
            loss = None
            if labels is not None:
                loss = F.cross_entropy(student_logits, labels)
                if self.args.eval_with_teacher:
                    with self.accelerator.autocast():
                        teacher_logits = self.teacher(inputs)
                    _, logged = self.distillation_objective(student_logits, teacher_logits, labels)
                    self._eval_means.add(logged)
        if prediction_loss_only:
            return loss, None, None
        return loss, student_logits, labels

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        self._eval_means.reset()
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        if self._eval_means:
            for name, value in self._eval_means.pop_means(self.accelerator).items():
                output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output

    # ---- checkpoints ----

    def _reloads_with_from_pretrained(self, model: nn.Module) -> bool:
        return (
            isinstance(model, PreTrainedModel)
            and not getattr(model, "_hf_peft_config_loaded", False)
            and not self.is_deepspeed_enabled
            and not self.is_fsdp_enabled
        )

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: nn.Module | None = None
    ) -> None:
        """Load the student's weights from a checkpoint the way ``from_pretrained`` does.

        transformers 5.23's Trainer restores a checkpoint with a plain ``load_state_dict``,
        but ``save_pretrained`` writes some architectures (ViT among them) under their legacy
        key names (``save_original_format=True``), so on resume their renamed layers were
        silently left at the new run's initial weights. ``from_pretrained`` applies the key
        conversion; the strict load makes any remaining mismatch an error. DeepSpeed, FSDP
        and PEFT checkpoints keep the Trainer's own loaders.
        """
        model = self.model if model is None else model
        if not self._reloads_with_from_pretrained(model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        logger.info("loading the student's weights from %s", resume_from_checkpoint)
        reloaded = type(model).from_pretrained(resume_from_checkpoint)
        model.load_state_dict(reloaded.state_dict(), strict=True)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end`` through :meth:`_load_from_checkpoint` (same key issue)."""
        if not self._reloads_with_from_pretrained(self.model):
            super()._load_best_model()
            return
        logger.info("loading the best student from %s", self.state.best_model_checkpoint)
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    # ---- logging ----

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._train_means.reset()
        return super().train(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged loss parts to each training log; raise if any was NaN/inf."""
        if "loss" in logs and self._train_means:
            means = self._train_means.pop_means(self.accelerator)
            raise_if_not_finite(means, step=self.state.global_step)
            logs.update(means)
        super().log(logs, start_time)


def raise_if_not_finite(means: dict[str, float], step: int) -> None:
    """Pop the non-finite logit counts from ``means``; ``ValueError`` naming the culprit."""
    student_nonfinite = means.pop(NONFINITE_STUDENT, 0.0)
    teacher_nonfinite = means.pop(NONFINITE_TEACHER, 0.0)
    if teacher_nonfinite > 0:
        raise ValueError(
            f"the teacher's logits contained NaN or inf before step {step}: check the teacher "
            "checkpoint, its input preprocessing and mixed precision (fp16 overflow), or the "
            "cached teacher_logits column"
        )
    if student_nonfinite > 0:
        raise ValueError(
            f"the student's logits became NaN or inf before step {step}: lower the learning "
            "rate, clip gradients (--max_grad_norm) or use bf16 instead of fp16"
        )
    not_finite = sorted(name for name, value in means.items() if not math.isfinite(value))
    if not_finite:
        raise ValueError(
            f"non-finite training loss parts {not_finite} before step {step}: check the loss "
            "hyperparameters (--loss_kwargs) and the learning rate"
        )
