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

Checkpoints: the student alone is saved (the teacher is not in its module tree), by
:func:`hf_kd.hub.save_student`: safetensors only, a timm student in the layout that both
``timm.create_model("hf-hub:...")`` and ``AutoModelForImageClassification`` load, with its
preprocessing. On resume and ``load_best_model_at_end`` it is reloaded through
``from_pretrained``, because transformers 5.23's plain ``load_state_dict`` misses the legacy
key names that ``save_pretrained`` writes for ViT and silently leaves those layers untrained.

Model card and Hub: ``save_model`` (called by the user, not for checkpoints) also writes the
student's model card (:mod:`hf_kd.model_card`: ``README.md`` with a model-index holding the
latest evaluation's accuracy, ``student_card.json``, ``training_curves.png``), so an offline
run leaves a complete folder; ``push_to_hub`` saves the same folder and uploads its student
files (:data:`hf_kd.hub.STUDENT_REPO_FILES`) as one commit.

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
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from huggingface_hub import CommitInfo, HfApi
from torch import Tensor, nn
from torch.utils.data import DataLoader
from transformers import EvalPrediction, PreTrainedModel, Trainer
from transformers.trainer_utils import EvalLoopOutput, HubStrategy, SaveStrategy
from transformers.utils.hub import PushInProgress

from hf_kd.arguments import DistillationArguments
from hf_kd.data.device_views import IMAGES_COLUMN, DeviceViews
from hf_kd.data.streaming import StreamingImages
from hf_kd.distillation_token import (
    enable_distilled_training,
    forward_heads,
    has_distillation_token,
    head_accuracy_means,
)
from hf_kd.eval_samples import samples_kept_by_gather
from hf_kd.hub import copy_student_files, push_student_to_hub
from hf_kd.losses import build_loss
from hf_kd.losses._common import check_logits_and_labels
from hf_kd.metrics import accuracy_means
from hf_kd.model_card import ModelSummary, latest_head_accuracies
from hf_kd.model_folder import ModelFolderMixin, dataset_sizes
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.speed import InferenceSpeed, measure_inference_speed
from hf_kd.teacher import FrozenTeacher, check_teacher_matches_student, prepare_teacher

logger = logging.getLogger(__name__)

NONFINITE_STUDENT = "nonfinite_student_logits"
NONFINITE_TEACHER = "nonfinite_teacher_logits"
# The card's speed-up: teacher and student timed on one batch of at most this many images
# (5 timed forward passes each, after one warm-up), cheap next to a save.
SPEED_BATCH_SIZE = 32
SPEED_REPEATS = 5
# DistillationLoss constructor arguments that are not hyperparameters of the method (the
# card states logit standardisation on its own).
NOT_LOSS_HYPERPARAMETERS = ("check_values", "logit_standardization")
IMAGE_COLUMNS = ("pixel_values", "teacher_pixel_values")


class RunningMeans:
    """Sample-weighted sums of logged scalars kept on the device; averaged only when read.

    ``add`` never synchronises with the host. ``pop_means`` sums the weighted values and the
    weights over processes (one all-reduce), divides, then resets: the mean over every
    sample added on every process. Training adds one micro-batch mean per step (weight 1,
    equal on every process); evaluation adds the mean over a batch's real samples weighted
    by their number.
    """

    def __init__(self) -> None:
        self._sums: dict[str, Tensor | float] = {}
        self._count = 0

    def __bool__(self) -> bool:
        return bool(self._sums)

    def add(self, values: Mapping[str, Tensor | float], weight: int = 1) -> None:
        """Add means over ``weight`` samples; weight 0 (a batch of padding) adds only names."""
        for name, value in values.items():
            if isinstance(value, Tensor):
                value = value.detach().float()
            if weight != 1:
                value = value * weight if weight else 0.0
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._count += weight

    def reset(self) -> None:
        self._sums = {}
        self._count = 0

    def pop_means(self, accelerator: Accelerator) -> dict[str, float]:
        """Mean per name over samples and processes. Collective: call on every rank."""
        names = sorted(self._sums)
        totals = torch.stack(
            [
                torch.as_tensor(value, dtype=torch.float32, device=accelerator.device)
                for value in [*(self._sums[name] for name in names), self._count]
            ]
        )
        totals = accelerator.reduce(totals, reduction="sum")
        means = (totals[:-1] / totals[-1]).tolist()
        self.reset()
        return dict(zip(names, means, strict=True))


class DistillationTrainer(ModelFolderMixin, Trainer):
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
        compute_metrics: by default none: evaluation counts top-1 ``accuracy`` and
            ``top5_accuracy`` on the device (:func:`hf_kd.metrics.accuracy_means`) and
            ``evaluate()`` gathers no ``[N, C]`` logits; ``predict()`` still returns them. A
            ``compute_metrics`` given here takes the Trainer's own path (gathered logits or
            ``preprocess_logits_for_metrics``' output);
            :func:`hf_kd.metrics.compute_accuracy_metrics` gives the same two metrics there
            from class scores ``[N, C]`` (not from top-k indices).
        teacher_name, student_name: how the model card names the models, followed by the
            arguments each was built with when they change its architecture. Default: the
            Hub id or folder each was loaded from, else the timm architecture or model type.
            The card's ``base_model`` is the student's initialisation (the checkpoint it was
            loaded from), never the teacher.
        dataset_name: the training dataset as the card names it (a Hub id joins the card's
            ``datasets``).
        eval_split_name: the split of the latest evaluation, whose accuracy the card reports
            (``"validation"``; ``"test"`` when you evaluate on the test split last).
        training_eval_split_name: the split of ``eval_dataset``, evaluated during training
            (``"validation"``); the card's curves name it.
        teacher_eval_accuracy: the teacher's top-1 accuracy on that split, for the card.
        split_sizes: images per split for the card (``{"train": ..., "validation": ...,
            "test": ...}``). Default: ``train`` and ``validation`` from the lengths of
            ``train_dataset`` and ``eval_dataset`` when they have one.

    Batches are dicts with ``pixel_values`` ``[B, 3, H, W]`` and ``labels`` ``[B]`` int64,
    optionally ``teacher_pixel_values`` and ``teacher_logits``. Evaluation reports the
    student's accuracy, top-5 accuracy and plain cross-entropy (``eval_loss``) without
    running the teacher, unless ``args.eval_with_teacher``: exact means over the samples,
    also under DDP. ``predict()`` returns the student's float logits ``[N, C]``, as the
    Trainer does, and the same metrics.
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
        teacher_name: str | None = None,
        student_name: str | None = None,
        dataset_name: str | None = None,
        eval_split_name: str = "validation",
        training_eval_split_name: str = "validation",
        teacher_eval_accuracy: float | None = None,
        split_sizes: Mapping[str, int] | None = None,
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
        # Sizes are counted now, before Accelerate may shard either model.
        self.student_summary = ModelSummary.of(self.model, student_name)
        self.teacher_summary = (
            ModelSummary.of(teacher_model, teacher_name)
            if teacher_model is not None
            else ModelSummary(teacher_name or "unknown teacher (cached logits)", None, None)
        )
        self.dataset_name = dataset_name
        self.eval_split_name = eval_split_name
        self.training_eval_split_name = training_eval_split_name
        self.teacher_eval_accuracy = teacher_eval_accuracy
        self.split_sizes = (
            dict(split_sizes)
            if split_sizes is not None
            else dataset_sizes(train=train_dataset, validation=eval_dataset)
        )
        self.student_preprocessing = student_preprocessing
        self._inference_speed: InferenceSpeed | None = None
        self._hub_client: HfApi | None = None
        # A student with a distillation token (DeiT) trains its two heads apart.
        self.distillation_token = self.model is not None and has_distillation_token(self.model)
        if self.distillation_token:
            enable_distilled_training(self.model)
        self.objective = args.resolve_objective(distillation_token=self.distillation_token)
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
        self.device_views = (
            DeviceViews(student_preprocessing, self.teacher.preprocessing)
            if student_preprocessing is not None
            else None
        )

    # ---- inputs and models ----

    def call_model_init(self, trial: Any = None) -> nn.Module:
        model = super().call_model_init(trial)
        if has_distillation_token(model):
            enable_distilled_training(model)
        if self.args.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """On the device; uint8 views made model inputs there (:meth:`_build_views`); image
        batches in channels_last when ``args.channels_last``."""
        inputs = super()._prepare_inputs(inputs)
        if IMAGES_COLUMN in inputs:
            inputs = self._build_views(inputs)
        if self.args.channels_last:
            for name in IMAGE_COLUMNS:
                if isinstance(inputs.get(name), Tensor) and inputs[name].ndim == 4:
                    inputs[name] = inputs[name].contiguous(memory_format=torch.channels_last)
        return inputs

    def get_train_dataloader(self) -> DataLoader:
        """The Trainer's loader, except for a streamed split (:class:`hf_kd.data.StreamingImages`):
        already this rank's share (``split_dataset_by_node``), it gets a loader that Accelerate
        neither splits again nor dispatches from rank 0; it only places batches on the
        device."""
        if not isinstance(self.train_dataset, StreamingImages):
            return super().get_train_dataloader()
        loader = DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
        )
        return prepare_data_loader(
            loader,
            self.args.device,
            num_processes=1,
            process_index=0,
            put_on_device=True,
            dispatch_batches=False,
        )

    def _build_views(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """A decode-once batch (uint8 ``images``, ``view_params``; :mod:`hf_kd.data.decoded`)
        augmented, resized and normalised where it is (:class:`hf_kd.data.DeviceViews`); the
        teacher's view too when the teacher will run on it and has its own preprocessing."""
        if self.device_views is None:
            raise ValueError(
                "the batch holds uint8 'images' (the decode-once path) but the trainer does not "
                "know the student's preprocessing: pass student_preprocessing= to the trainer"
            )
        runs_teacher = (
            "teacher_logits" not in inputs
            and self.teacher.model is not None
            and (self.model.training or self.args.eval_with_teacher)
        )
        return self.device_views(inputs, with_teacher=runs_teacher)

    # ---- the objective ----

    def current_epoch(self) -> float:
        """The 1-based fractional epoch of the next optimizer step, from the Trainer state."""
        return (self.state.epoch or 0.0) + 1.0

    def distillation_objective(
        self,
        student_logits: Tensor,
        teacher_logits: Tensor,
        labels: Tensor,
        distillation_logits: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor | float]]:
        """``total = ce_weight * CE + kd_weight * w(epoch) * loss`` and its logged parts.

        The logged parts: ``ce_loss``, ``kd_loss`` (the distillation loss alone),
        ``kd_loss/<term>`` for every term and ``kd_warmup_factor`` (``w``). CE takes the raw
        student logits in float32 and ``--label_smoothing_factor`` (0 by default, as in the
        official code); the loss gets the 1-based fractional epoch (MCLD's category warm-up).
        For a distillation-token student ``student_logits`` is the class head's ``z_cls``
        (CE) and ``distillation_logits`` the distillation head's ``z_dist`` (the loss);
        otherwise both terms read ``student_logits``.
        """
        if distillation_logits is None:
            distillation_logits = student_logits
        epoch = self.current_epoch()
        warmup_factor = self.objective.kd_warmup_factor(epoch)
        ce_loss = F.cross_entropy(
            student_logits.float(), labels, label_smoothing=self.args.label_smoothing_factor
        )
        distillation = self.distillation_loss(
            distillation_logits, teacher_logits, labels, epoch=epoch
        )
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
        student_outputs = self.student_forward(model, inputs["pixel_values"])
        # a distillation-token student: CE on the class head, the loss on the distillation
        # head (their average, ``logits``, is its prediction); otherwise both on ``logits``
        student_logits = getattr(student_outputs, "cls_logits", None)
        if student_logits is None:
            student_logits = student_outputs.logits
        distillation_logits = getattr(student_outputs, "distillation_logits", None)
        if not self._inputs_validated:
            # One host sync on the first step: label range and finite logits. Later steps
            # count non-finite logits on the device and log() checks them.
            check_logits_and_labels(
                student_outputs.logits, teacher_logits, labels, check_values=True
            )
            self._inputs_validated = True
        total, logged = self.distillation_objective(
            student_logits, teacher_logits, labels, distillation_logits
        )
        logged[NONFINITE_STUDENT] = (~torch.isfinite(student_outputs.logits.detach())).sum()
        logged[NONFINITE_TEACHER] = (~torch.isfinite(teacher_logits)).sum()
        self._train_means.add(logged)
        return (total, student_outputs) if return_outputs else total

    def student_forward(self, model: nn.Module, pixel_values: Tensor) -> Any:
        """The student's output on ``pixel_values``: ``logits``, and for a
        distillation-token student also ``cls_logits`` and ``distillation_logits``
        (:func:`hf_kd.distillation_token.forward_heads`); one forward either way."""
        if not self.distillation_token:
            return model(pixel_values=pixel_values)
        return forward_heads(model, self.accelerator.unwrap_model(model), pixel_values)

    # ---- evaluation ----

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """The student's logits ``[B, C]`` (float32) and plain cross-entropy; the teacher only
        if ``args.eval_with_teacher``.

        With labels it also adds this batch's evaluation metrics on the device
        (:meth:`_add_eval_means`), which :meth:`evaluation_loop` reads once at the end.
        """
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        with torch.no_grad():
            # Explicit autocast: before train() the student has not been prepared by
            # Accelerate, so its forward is not yet wrapped in the run's mixed precision.
            with self.accelerator.autocast():
                student_outputs = self.student_forward(model, inputs["pixel_values"])
            student_logits = student_outputs.logits.float()
            loss = None
            if labels is not None:
                loss = F.cross_entropy(student_logits, labels)
                self._add_eval_means(inputs, student_logits, labels, student_outputs)
        if prediction_loss_only:
            return loss, None, None
        return loss, student_logits, labels

    def _add_eval_means(
        self,
        inputs: dict[str, Any],
        student_logits: Tensor,
        labels: Tensor,
        student_outputs: Any = None,
    ) -> None:
        """Add the batch's means over its real samples, weighted by their number.

        Real: the samples ``gather_for_metrics`` keeps (:func:`samples_kept_by_gather` drops
        Accelerate's padding of the last batch under DDP), so every mean is exact over the
        evaluation set. ``loss`` is the student's cross-entropy; ``accuracy`` and
        ``top5_accuracy`` unless the user gave ``compute_metrics``; ``ce_loss``, ``kd_loss``
        and the loss terms with ``args.eval_with_teacher``; for a distillation-token student
        (``student_outputs`` with both heads) each head's accuracy, and the loss parts of
        each head's objective.
        """
        kept = samples_kept_by_gather(self.accelerator, labels.shape[0])
        # A process whose batch is all padding adds its names with weight 0 (the read is
        # collective); one sample stands in so that no mean is taken over nothing.
        real = slice(0, max(kept, 1))
        logits, real_labels = student_logits[real], labels[real]
        values: dict[str, Tensor | float] = {"loss": F.cross_entropy(logits, real_labels)}
        if self.compute_metrics is None:
            values.update(accuracy_means(logits, real_labels))
        cls_logits, distillation_logits = logits, None
        if self.distillation_token:
            cls_logits = student_outputs.cls_logits[real].float()
            distillation_logits = student_outputs.distillation_logits[real].float()
            values.update(head_accuracy_means(cls_logits, distillation_logits, real_labels))
        if self.args.eval_with_teacher:
            with self.accelerator.autocast():
                teacher_logits = self.teacher(inputs)
            _, logged = self.distillation_objective(
                cls_logits, teacher_logits[real], real_labels, distillation_logits
            )
            values.update(logged)
        self._eval_means.add(values, weight=kept)

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """The Trainer's loop, then the exact sample means that :meth:`prediction_step` added
        on the device, reduced over processes once (``eval_loss`` among them)."""
        self._eval_means.reset()
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        if self._eval_means:  # exact sample means; they replace the Trainer's eval_loss
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

    # ---- saving, model card and Hub ----

    def card_objective_fields(self) -> dict[str, Any]:
        """The model card's objective: the teacher's name and size, the method, the weights
        and every loss hyperparameter, each head's accuracy for a distillation-token student
        and, when the student was distilled (``kd_weight > 0``), the teacher's accuracy and
        the measured speed-up (:meth:`inference_speed`). With ``kd_weight == 0`` the card
        states that the student was trained with cross-entropy only
        (:attr:`hf_kd.model_card.StudentCard.distilled`); the rest of the card is
        :meth:`hf_kd.model_folder.ModelFolderMixin.student_card`'s.
        """
        cls_accuracy, distillation_accuracy = latest_head_accuracies(self.state.log_history)
        loss_hyperparameters = {
            name: value
            for name, value in self.distillation_loss.hyperparameters().items()
            if name not in NOT_LOSS_HYPERPARAMETERS
        }
        objective = self.objective
        return {
            "teacher": self.teacher_summary,
            "method": objective.method,
            "loss_hyperparameters": loss_hyperparameters,
            "ce_weight": objective.ce_weight,
            "kd_weight": objective.kd_weight,
            "warmup_epochs": objective.warmup_epochs,
            "warmup_schedule": objective.warmup_schedule,
            "logit_standardization": self.distillation_loss.logit_standardization,
            "teacher_eval_accuracy": self.teacher_eval_accuracy,
            "speed": self.inference_speed() if objective.kd_weight > 0 else None,
            "distillation_token": self.distillation_token,
            "eval_cls_accuracy": cls_accuracy,
            "eval_distillation_accuracy": distillation_accuracy,
        }

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> CommitInfo | Future[CommitInfo] | None:
        """Publish the student to ``args.hub_model_id``: save it, write its card, upload.

        One commit of the student files of ``args.output_dir``
        (:data:`hf_kd.hub.STUDENT_REPO_FILES`: ``config.json``, ``model.safetensors``, the
        image processor, ``README.md``, ``student_card.json``, ``training_curves.png`` and
        the ``*_results.json`` files), not the whole folder as the Trainer would (its
        checkpoints, ``training_args.bin`` and anything else written there stay local).
        ``kwargs`` go to :meth:`create_model_card` (the Trainer's: ``language``,
        ``license``, ``tags``, ``model_name``, ``finetuned_from``, ``tasks``,
        ``dataset_tags``, ``dataset``, ``dataset_args``). Returns the commit (a ``Future``
        of it when ``blocking=False``) on the main process, ``None`` on the others.
        """
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self.create_model_card(**kwargs)
        self._finish_current_push()
        return push_student_to_hub(
            self.args.output_dir,
            self.hub_model_id,
            token=token,
            private=private if private is not None else self.args.hub_private_repo,
            commit_message=commit_message or "Upload distilled student",
            revision=revision if revision is not None else self.args.hub_revision,
            run_as_future=not blocking,
        )

    def _hub_api(self) -> HfApi:
        """The client of the mid-training pushes: its background uploads run one at a time,
        in the order they were started, so the commits follow the checkpoints."""
        if self._hub_client is None:
            self._hub_client = HfApi(token=self.args.hub_token, library_name="hf-kd")
        return self._hub_client

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Mid-training push (``save_strategy`` set, ``hub_strategy`` not ``end``): the
        checkpoint's student files and an up-to-date card, as :meth:`push_to_hub` uploads
        them, in the background.

        The student files and the card go into a private snapshot folder that the upload
        reads and that is removed once it is done, so a later checkpoint cannot change or
        empty an earlier commit whose upload is still queued (``hub_always_push``).

        The Trainer's own version would upload the whole output folder, ``training_args.bin``
        (a pickle) included. With ``hub_strategy`` ``checkpoint`` or ``all_checkpoints`` the
        user asked for resumable checkpoints, so the checkpoint folder itself (optimizer and
        scheduler state included) is still uploaded under ``last-checkpoint/`` or its name.
        """
        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        in_progress = self.push_in_progress is not None and not self.push_in_progress.is_done()
        if in_progress and not self.args.hub_always_push:
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        snapshot = tempfile.mkdtemp(prefix="hf-kd-push-")
        copy_student_files(checkpoint_folder, snapshot)
        self.create_model_card(output_dir=snapshot)
        message = (
            f"Training in progress, step {self.state.global_step}"
            if self.args.save_strategy == SaveStrategy.STEPS
            else f"Training in progress, epoch {int(self.state.epoch or 0)}"
        )
        student_job = push_student_to_hub(
            snapshot,
            self.hub_model_id,
            commit_message=message,
            revision=self.args.hub_revision,
            run_as_future=True,
            api=self._hub_api(),
        )
        student_job.add_done_callback(lambda _: shutil.rmtree(snapshot, ignore_errors=True))
        jobs = [student_job]
        if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            folder_in_repo = (
                "last-checkpoint"
                if self.args.hub_strategy == HubStrategy.CHECKPOINT
                else os.path.basename(checkpoint_folder)
            )
            jobs.append(
                self._hub_api().upload_folder(
                    repo_id=self.hub_model_id,
                    folder_path=checkpoint_folder,
                    path_in_repo=folder_in_repo,
                    commit_message=f"{message}, checkpoint",
                    revision=self.args.hub_revision,
                    run_as_future=True,
                )
            )
        if in_progress:
            self.push_in_progress.jobs.extend(jobs)
        else:
            self.push_in_progress = PushInProgress(jobs)

    def inference_speed(self) -> InferenceSpeed | None:
        """Teacher vs student latency on one batch, measured once and kept; ``None`` if it
        cannot be measured.

        Not measured without a teacher model (cached logits) or when Accelerate shards the
        models (FSDP, DeepSpeed: a forward pass on one process would wait for the others).
        A failed measurement is logged as a warning and leaves the card without a speed-up:
        it never costs a save.
        """
        if self._inference_speed is not None:
            return self._inference_speed
        if self.teacher.model is None or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            logger.info(
                "inference speed-up not measured: no teacher model, or the models are sharded"
            )
            return None
        try:
            self._inference_speed = self._measure_inference_speed()
        except Exception as error:  # a measurement must never fail the save that needs it
            logger.warning(
                "could not measure the inference speed-up for the model card (%s: %s); the "
                "card omits it",
                type(error).__name__,
                error,
            )
        return self._inference_speed

    def _measure_inference_speed(self) -> InferenceSpeed:
        batch = self._prepare_inputs(self._timing_batch())
        student = self.accelerator.unwrap_model(self.model)
        with self.accelerator.autocast():
            teacher_pixel_values = self.teacher.teacher_pixel_values(batch)
            return measure_inference_speed(
                self.teacher.model,
                student,
                batch["pixel_values"],
                teacher_pixel_values,
                repeats=SPEED_REPEATS,
                warmup=1,
            )

    def _timing_batch(self) -> dict[str, Any]:
        """The first evaluation images (else training images), collated, without Accelerate's
        data loader: only the main process runs this."""
        dataset = self.eval_dataset if self.eval_dataset is not None else self.train_dataset
        if isinstance(dataset, Mapping):  # several named evaluation datasets
            dataset = next(iter(dataset.values()))
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise ValueError(
                f"no indexable dataset to time the models on (got {type(dataset).__name__})"
            )
        size = min(len(dataset), self.args.per_device_eval_batch_size, SPEED_BATCH_SIZE)
        if size == 0:
            raise ValueError("the dataset to time the models on is empty")
        batch = self.data_collator([dataset[index] for index in range(size)])
        return self._build_views(batch) if IMAGES_COLUMN in batch else batch

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
