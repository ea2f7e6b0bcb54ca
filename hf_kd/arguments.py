"""``DistillationArguments``: ``TrainingArguments`` plus the distillation objective.

Every field is documented in its ``metadata["help"]``, so
``HfArgumentParser(DistillationArguments)`` prints the user manual with ``--help``.
Values resolve as: an explicit value > the ``--distillation_preset`` > the defaults, in one
place, :meth:`DistillationArguments.resolve_objective`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import TrainingArguments

from hf_kd.losses import available_losses, available_presets, build_loss, preset
from hf_kd.objective import WARMUP_SCHEDULES, DistillationObjective
from hf_kd.preprocessing import ImagePreprocessing

logger = logging.getLogger(__name__)

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
TORCH_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_COMPILE_BACKEND = "inductor"
# The preset whose warm-up stands for a method's own default when no preset is chosen: the
# loss hyperparameter defaults are the CIFAR-100 official ones too (spec section A).
DEFAULT_WARMUP_PRESET = "cifar100"
DISTILLATION_TOKEN_LOSSES = ("hard", "method")


def accelerator_available() -> bool:
    """Whether torch sees an accelerator that pinned memory serves (CUDA before torch 2.6)."""
    accelerator = getattr(torch, "accelerator", None)
    return accelerator.is_available() if accelerator is not None else torch.cuda.is_available()


@dataclass
class DistillationArguments(TrainingArguments):
    """Training arguments of a distillation run (``TrainingArguments`` + the objective).

    ``total = ce_weight * CE(student, y) + kd_weight * w(epoch) * distillation_loss``, with
    ``w`` the outer warm-up of DKD, RLD and NormKD+DKD (see
    :class:`hf_kd.objective.DistillationObjective`).

    Parent defaults that change (see their help): ``remove_unused_columns=False``,
    ``logging_nan_inf_filter=False``, ``ddp_find_unused_parameters=False``,
    ``dataloader_pin_memory`` on only when an accelerator is available.
    """

    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Drop dataset columns that the student's forward() does not name. hf-kd "
            "changes the Trainer default from True to False: datasets with an on-the-fly "
            "`with_transform` need their raw `image` column to build `pixel_values` (with True "
            "they fail with `KeyError: 'image'`), and the trainer reads the optional "
            "`teacher_pixel_values` and `teacher_logits` columns itself."
        },
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "Replace a NaN/inf step loss in the logged training loss by the running mean. "
            "hf-kd changes the Trainer default from True to False: the filter reads every step's "
            "loss on the host, a device synchronisation in every training step. hf-kd instead "
            "counts non-finite logits and loss parts on the device and raises a ValueError at the "
            "next log, naming the teacher or the student."
        },
    )
    dataloader_pin_memory: bool = field(
        default_factory=accelerator_available,
        metadata={
            "help": "Pin the data loaders' CPU memory for faster copies to the accelerator. hf-kd "
            "changes the Trainer default from True to 'on only when an accelerator (CUDA, XPU, "
            "MPS, ...) is available': without one pinning does nothing and torch warns at every "
            "data loader. --use_cpu turns it off too."
        },
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={
            "help": "DistributedDataParallel's find_unused_parameters. hf-kd changes the Trainer "
            "default from None (which means True unless gradient checkpointing is on) to False: "
            "every parameter of a classifier's forward gets a gradient (the teacher is not part "
            "of the DDP module), and True costs a traversal of the autograd graph at every step "
            "and a warning on every rank. Set it True for a student with parameters its forward "
            "does not use (DDP then stops with an error naming find_unused_parameters)."
        },
    )
    distillation_method: str = field(
        default="mcld",
        metadata={
            "help": "The distillation loss: any name registered in hf_kd.losses "
            f"({', '.join(available_losses())})."
        },
    )
    distillation_token_loss: Literal["hard", "method"] = field(
        default="method",
        metadata={
            "help": "What the distillation head of a student with a distillation token (DeiT: "
            "timm's deit_*_distilled_*, transformers' DeiTForImageClassificationWithTeacher, "
            "detected from the model) learns; its class head always learns CE with the labels. "
            "'method': the --distillation_method loss on the distillation head's logits; "
            "'hard': DeiT's hard distillation, CE against the teacher's argmax (the loss "
            "'hard', preset weights 0.5/0.5). Default 'method': in benchmarks/deit_token.py "
            "(CIFAR-100 16x16, small ViT from scratch, 3 seeds) the token trained with MCLD "
            "was ahead of hard distillation at every seed. Students without a distillation "
            "token ignore it."
        },
    )
    distillation_preset: Literal["cifar100", "imagenet"] | None = field(
        default=None,
        metadata={
            "help": "Take ce_weight, kd_weight, warmup_epochs and the loss hyperparameters "
            "from the method's official setting on this dataset; explicit flags still win. "
            "None: ce_weight = kd_weight = 1 and the loss's own defaults."
        },
    )
    ce_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the cross-entropy between the student and the labels (>= 0). "
            "None: from the preset, else 1.0."
        },
    )
    kd_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the distillation loss (>= 0). None: from the preset, else 1.0."
        },
    )
    warmup_epochs: float | None = field(
        default=None,
        metadata={
            "help": "Epochs over which the distillation loss is ramped up, w = min(epoch / "
            "warmup_epochs, 1) (this is not the learning-rate warm-up, see --warmup_steps); 0 "
            "disables it. None: from the preset, else the method's official default (20 for "
            "dkd, rld and normkd_dkd, 0 for kd, normkd and mcld)."
        },
    )
    warmup_schedule: Literal["epoch", "linear"] = field(
        default="epoch",
        metadata={
            "help": "Shape of the distillation warm-up: 'epoch' is the official per-epoch step "
            "function on 1-based whole epochs; 'linear' ramps it per optimizer step."
        },
    )
    logit_standardization: bool = field(
        default=False,
        metadata={
            "help": "Z-score the student and teacher logits before the distillation loss "
            "(Sun et al., CVPR 2024). With a preset, the LS paper's tuned setting is used "
            "where one exists."
        },
    )
    loss_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Hyperparameters of the distillation loss as a JSON object, e.g. "
            "'{\"temperature\": 2.0}'; they override the preset. Unknown names are an error "
            "listing the valid ones."
        },
    )
    teacher_image_size: list[int] | None = field(
        default=None,
        metadata={
            "help": "The teacher's input size, one value (square) or 'height width'. None: the "
            "teacher's own preprocessing, else the student's."
        },
    )
    teacher_image_mean: list[float] | None = field(
        default=None,
        metadata={
            "help": "The teacher's normalisation mean (3 values, RGB). None: the teacher's own "
            "preprocessing, else the student's."
        },
    )
    teacher_image_std: list[float] | None = field(
        default=None,
        metadata={
            "help": "The teacher's normalisation std (3 values > 0, RGB). None: the teacher's "
            "own preprocessing, else the student's."
        },
    )
    teacher_interpolation: Literal["bilinear", "bicubic", "nearest"] | None = field(
        default=None,
        metadata={
            "help": "Interpolation used to resize the student's batch to the teacher's size on "
            "the device (antialiased). None: the teacher's own preprocessing, else the "
            "student's."
        },
    )
    eval_with_teacher: bool = field(
        default=False,
        metadata={
            "help": "Also run the teacher during evaluation and report eval_ce_loss, "
            "eval_kd_loss and every loss term. Off by default: evaluation then reports the "
            "student's accuracy, top-5 accuracy and cross-entropy (eval_loss) alone."
        },
    )

    channels_last: bool = field(
        default=False,
        metadata={
            "help": "Keep the student's and the teacher's 4-D weights and the image batches "
            "(pixel_values, teacher_pixel_values, converted on the device) in channels_last "
            "(NHWC) memory format. Usually faster for convolutional models on GPUs with tensor "
            "cores and on CPUs (oneDNN); little effect on ViTs, whose only convolution is the "
            "patch embedding. Numerically the same model."
        },
    )
    teacher_torch_compile: bool = field(
        default=False,
        metadata={
            "help": "Compile the teacher's forward with torch.compile (it runs in inference "
            "mode, so only its forward graph is compiled). Independent of --torch_compile, "
            "which compiles the student. Set automatically by --teacher_torch_compile_backend "
            "or --teacher_torch_compile_mode."
        },
    )
    teacher_torch_compile_backend: str | None = field(
        default=None,
        metadata={
            "help": "torch.compile backend for the teacher, e.g. 'inductor', 'aot_eager' "
            "(torch._dynamo.list_backends()). None: the student's --torch_compile_backend if "
            "set, else 'inductor'."
        },
    )
    teacher_torch_compile_mode: (
        Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None
    ) = field(
        default=None,
        metadata={
            "help": "torch.compile mode for the teacher (inductor only). None: torch's default."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher_torch_compile_backend is not None or self.teacher_torch_compile_mode:
            self.teacher_torch_compile = True
        if isinstance(self.loss_kwargs, str):
            try:
                self.loss_kwargs = json.loads(self.loss_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"--loss_kwargs must be a JSON object, e.g. '{{\"temperature\": 2.0}}'; "
                    f"could not parse {self.loss_kwargs!r}: {error}"
                ) from None
        if self.loss_kwargs is not None and not isinstance(self.loss_kwargs, dict):
            raise ValueError(
                "--loss_kwargs must be a JSON object (a dict), "
                f"got {type(self.loss_kwargs).__name__}"
            )
        if self.loss_kwargs and "logit_standardization" in self.loss_kwargs:
            raise ValueError(
                "set logit standardisation with --logit_standardization, not in --loss_kwargs"
            )
        if self.distillation_method not in available_losses():
            raise ValueError(
                f"unknown --distillation_method {self.distillation_method!r}; registered "
                f"losses: {', '.join(available_losses())}"
            )
        if self.distillation_token_loss not in DISTILLATION_TOKEN_LOSSES:
            raise ValueError(
                f"--distillation_token_loss must be one of {DISTILLATION_TOKEN_LOSSES}, got "
                f"{self.distillation_token_loss!r}"
            )
        if self.distillation_preset is not None and self.distillation_preset not in (
            available_presets()
        ):
            raise ValueError(
                f"unknown --distillation_preset {self.distillation_preset!r}; choose one of "
                f"{available_presets()} or leave it unset"
            )
        for name in ("ce_weight", "kd_weight", "warmup_epochs"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"--{name} must be >= 0, got {value}")
        if self.warmup_schedule not in WARMUP_SCHEDULES:
            raise ValueError(
                f"--warmup_schedule must be one of {WARMUP_SCHEDULES}, got {self.warmup_schedule!r}"
            )
        self._check_teacher_preprocessing()
        self._check_teacher_compile()
        objective = self.resolve_objective()
        if objective.ce_weight == 0 and objective.kd_weight == 0:
            raise ValueError("--ce_weight and --kd_weight are both 0: nothing would be trained")
        # Building the loss validates the hyperparameters (names and ranges) before training.
        build_loss(objective.method, **objective.loss_kwargs)

    def _check_teacher_preprocessing(self) -> None:
        if self.teacher_image_size is not None and (
            len(self.teacher_image_size) not in (1, 2) or min(self.teacher_image_size) <= 0
        ):
            raise ValueError(
                "--teacher_image_size takes one positive size (square) or 'height width', "
                f"got {self.teacher_image_size}"
            )
        for name in ("teacher_image_mean", "teacher_image_std"):
            value = getattr(self, name)
            if value is not None and len(value) != 3:
                raise ValueError(f"--{name} takes 3 values (RGB), got {value}")
        if self.teacher_image_std is not None and min(self.teacher_image_std) <= 0:
            raise ValueError(f"--teacher_image_std must be > 0, got {self.teacher_image_std}")
        if self.teacher_interpolation is not None and (
            self.teacher_interpolation not in INTERPOLATIONS
        ):
            raise ValueError(
                f"--teacher_interpolation must be one of {INTERPOLATIONS}, "
                f"got {self.teacher_interpolation!r}"
            )

    def _check_teacher_compile(self) -> None:
        mode = self.teacher_torch_compile_mode
        if mode is not None and mode not in TORCH_COMPILE_MODES:
            raise ValueError(
                f"--teacher_torch_compile_mode must be one of {TORCH_COMPILE_MODES}, got {mode!r}"
            )
        backend = self.teacher_torch_compile_backend
        if backend is not None:
            import torch._dynamo  # imported only when asked for: it takes a second

            backends = torch._dynamo.list_backends(exclude_tags=())
            if backend not in backends:
                raise ValueError(
                    f"unknown --teacher_torch_compile_backend {backend!r}; torch.compile "
                    f"backends: {', '.join(backends)}"
                )

    def resolve_teacher_compile(self) -> dict[str, str] | None:
        """``torch.compile`` keyword arguments for the teacher; ``None`` leaves it eager."""
        if not self.teacher_torch_compile:
            return None
        options = {
            "backend": self.teacher_torch_compile_backend
            or self.torch_compile_backend
            or DEFAULT_COMPILE_BACKEND
        }
        if self.teacher_torch_compile_mode is not None:
            options["mode"] = self.teacher_torch_compile_mode
        return options

    def resolve_objective(self, *, distillation_token: bool = False) -> DistillationObjective:
        """The objective of this run: explicit values > the preset > the defaults.

        Defaults without a preset: ``ce_weight = kd_weight = 1``, the loss's own
        hyperparameters, and the method's official warm-up (the CIFAR-100 setting: 20 epochs
        for DKD, RLD and NormKD+DKD, none for the others). ``distillation_token``: the
        student has a distillation head, whose loss is ``hard`` when
        ``distillation_token_loss="hard"`` (then ``--loss_kwargs`` must be empty).
        """
        method = self.distillation_method
        if distillation_token and self.distillation_token_loss == "hard":
            if self.loss_kwargs:
                raise ValueError(
                    f"--loss_kwargs {self.loss_kwargs} are for --distillation_method "
                    f"{method!r}, but this student's distillation token learns DeiT's hard "
                    "distillation, which has no hyperparameters: pass --distillation_token_loss "
                    "method to train the token with that loss, or drop --loss_kwargs"
                )
            method = "hard"
        if self.distillation_preset is not None:
            chosen = preset(
                method, self.distillation_preset, logit_standardization=self.logit_standardization
            )
            ce_weight, kd_weight = chosen.ce_weight, chosen.kd_weight
            warmup_epochs = chosen.warmup_epochs
            loss_kwargs = dict(chosen.loss_kwargs)
        else:
            ce_weight, kd_weight = 1.0, 1.0
            warmup_epochs = _official_warmup_epochs(method)
            loss_kwargs = {}
        loss_kwargs["logit_standardization"] = self.logit_standardization
        loss_kwargs.update(self.loss_kwargs or {})
        return DistillationObjective(
            method=method,
            ce_weight=float(ce_weight if self.ce_weight is None else self.ce_weight),
            kd_weight=float(kd_weight if self.kd_weight is None else self.kd_weight),
            warmup_epochs=float(
                warmup_epochs if self.warmup_epochs is None else self.warmup_epochs
            ),
            warmup_schedule=self.warmup_schedule,
            loss_kwargs=loss_kwargs,
        )

    def resolve_teacher_preprocessing(
        self, default: ImagePreprocessing | None
    ) -> ImagePreprocessing | None:
        """The teacher's preprocessing: the ``--teacher_image_*`` flags over ``default``.

        ``default`` is the teacher's own preprocessing, else the student's; ``None`` with no
        flag set means the teacher takes the student's batch as it is.
        """
        overrides: dict[str, object] = {}
        if self.teacher_image_size is not None:
            size = self.teacher_image_size
            overrides["image_size"] = (size[0], size[-1])
        if self.teacher_image_mean is not None:
            overrides["mean"] = tuple(self.teacher_image_mean)
        if self.teacher_image_std is not None:
            overrides["std"] = tuple(self.teacher_image_std)
        if self.teacher_interpolation is not None:
            overrides["interpolation"] = self.teacher_interpolation
        if not overrides:
            return default
        if default is None:
            if "image_size" not in overrides:
                raise ValueError(
                    "the teacher's preprocessing is unknown: pass --teacher_image_size with the "
                    "other --teacher_image_* flags, or give the trainer teacher_preprocessing= "
                    "or student_preprocessing="
                )
            return ImagePreprocessing(**overrides)
        return dataclasses.replace(default, **overrides)


def _official_warmup_epochs(method: str) -> int:
    """The method's official outer warm-up (its CIFAR-100 setting); 0 if it has no preset."""
    try:
        return preset(method, DEFAULT_WARMUP_PRESET).warmup_epochs
    except ValueError:
        return 0
