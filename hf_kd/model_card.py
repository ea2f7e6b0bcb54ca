"""Model cards of classifiers trained with hf-kd: what was trained, how, and how well it does.

:class:`StudentCard` holds everything a card states (teacher -> student, parameter counts,
measured speed-up, method and citation, every hyperparameter, the training setup, eval and
transfer accuracy). A model trained without distillation (``kd_weight == 0``, or no
teacher: a teacher trained with cross-entropy by
:class:`hf_kd.classifier_trainer.ClassifierTrainer`) gets a card that says so and names no
teacher, method or speed-up (:attr:`StudentCard.distilled`). :func:`render_model_card`
turns it into a ``README.md``: YAML metadata with a ``model-index`` (built with
``huggingface_hub.ModelCardData``, so ``ModelCard`` parses it back) and a body rendered
from the Jinja template ``student_card.md`` (package data in ``hf_kd/templates/``, linked
from the repository's ``model_cards/``).
:func:`write_model_card` writes the card, its training-curves PNG and ``student_card.json``
(the card's data, so later results such as transfer evaluation can re-render it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData, hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError
from torch import nn
from transformers import PreTrainedModel, TrainingArguments

from hf_kd import models_cifar
from hf_kd.citations import citations_for, method_info
from hf_kd.models import count_parameters, is_timm_model
from hf_kd.plots import plot_training_curves
from hf_kd.speed import InferenceSpeed
from hf_kd.transfer import TransferResult, merge_transfer_results

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = Path(__file__).resolve().parent / "templates" / "student_card.md"
CARD_DATA_FILE = "student_card.json"
TRAINING_CURVES_FILE = "training_curves.png"
TASK = "image-classification"
# timm architectures that exist only once hf-kd is imported: the usage snippets import it first
HF_KD_ARCHITECTURES = frozenset(timm.list_models(module=models_cifar.__name__.rpartition(".")[2]))
# the libraries a card lists with their versions, as the Trainer's own cards do
FRAMEWORKS = ("hf-kd", "torch", "transformers", "timm", "datasets", "accelerate")

# TrainingArguments fields a card lists as training hyperparameters (when set)
# The TrainingArguments that configure the optimizer and schedule the Trainer builds; a run
# given its own (``Trainer(optimizers=(optimizer, scheduler))``) ignores them.
OPTIMIZER_ARGUMENTS = (
    "learning_rate",
    "weight_decay",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "lr_scheduler_type",
    "warmup_steps",
)
# The TrainingArguments a card lists.
TRAINING_HYPERPARAMETERS = (
    *OPTIMIZER_ARGUMENTS,
    "max_grad_norm",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "label_smoothing_factor",
)
# Per-step bookkeeping and implementation switches of torch optimizers and schedulers, not
# hyperparameters.
NOT_OPTIMIZER_SETTINGS = frozenset(
    {
        "params",
        "initial_lr",
        "foreach",
        "maximize",
        "capturable",
        "differentiable",
        "fused",
        "base_lrs",
        "last_epoch",
        "_step_count",
        "verbose",
        "_get_lr_called_within_step",
        "_last_lr",
        "_is_initial",
        "lr_lambdas",
    }
)


def _settings(state: Mapping[str, Any]) -> dict[str, Any]:
    """The plain (JSON) hyperparameters of an optimizer's param group or a scheduler's state."""
    plain = (bool, int, float, str, list, tuple)
    return {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in state.items()
        if name not in NOT_OPTIMIZER_SETTINGS and isinstance(value, plain)
    }


def describe_optimizer(
    optimizer: torch.optim.Optimizer, lr_scheduler: object | None = None
) -> dict[str, Any]:
    """The card's hyperparameters of an optimizer (and scheduler) given to the Trainer.

    ``learning_rate`` (the initial one) and ``weight_decay`` of the first parameter group,
    ``optimizer``: its class and that group's settings, ``lr_scheduler``: its class and
    settings (e.g. ``T_max``; a ``LambdaLR``'s function cannot be described, only named).
    """
    # Accelerate's wrappers (AcceleratedOptimizer, AcceleratedScheduler) hold the real ones
    optimizer = getattr(optimizer, "optimizer", optimizer)
    lr_scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
    group = optimizer.param_groups[0]
    described: dict[str, Any] = {
        "learning_rate": group.get("initial_lr", group["lr"]),
        "optimizer": {"class": type(optimizer).__name__, **_settings(group)},
    }
    described["optimizer"].pop("lr", None)
    if "weight_decay" in group:
        described["weight_decay"] = group["weight_decay"]
    if lr_scheduler is not None:
        state = lr_scheduler.state_dict() if hasattr(lr_scheduler, "state_dict") else {}
        described["lr_scheduler"] = {"class": type(lr_scheduler).__name__, **_settings(state)}
    return described


@dataclass
class ModelSummary:
    """A model as a card names it: Hub id, path or architecture, size and library.

    ``parameters`` and ``library`` are ``None`` when unknown (a teacher seen only through
    its cached logits). ``architecture`` is the timm architecture or transformers model
    type, ``model_args`` the arguments it was built with that differ from that
    architecture's defaults (timm ``create_model`` kwargs, or config attributes), which
    ``name`` states too (``vit_tiny_patch16_224 with img_size=32, depth=4``).
    ``initialisation`` is the checkpoint (Hub id or folder) whose weights the model started
    from; ``None`` when it was randomly initialised (trained from scratch).
    """

    name: str
    parameters: int | None
    library: Literal["timm", "transformers"] | None
    initialisation: str | None = None
    architecture: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: nn.Module, name: str | None = None) -> ModelSummary:
        """Summarise ``model``; ``name`` defaults to :func:`model_name_of`."""
        if is_timm_model(model):
            library = "timm"
        else:
            library = "transformers" if isinstance(model, PreTrainedModel) else None
        architecture, model_args = architecture_of(model)
        config = getattr(model, "config", None)
        return cls(
            name=described_name(name or model_name_of(model), architecture, model_args),
            parameters=count_parameters(model),
            library=library,
            # from_pretrained (and hf_kd.models.load_classifier) record where weights came from
            initialisation=getattr(config, "name_or_path", None) or None,
            architecture=architecture,
            model_args=model_args,
        )


def model_name_of(model: nn.Module) -> str:
    """How a card names a model by default: the Hub id or folder it was loaded from, else
    its timm architecture, else its transformers model type, else its class."""
    config = getattr(model, "config", None)
    if config is None:
        return type(model).__name__
    if config.name_or_path:
        return config.name_or_path
    if is_timm_model(model):
        return config.architecture
    return config.model_type or type(model).__name__


# Config entries that are not the architecture: labels, bookkeeping, dtype.
NOT_ARCHITECTURE_CONFIG_KEYS = frozenset(
    {
        "architectures",
        "dtype",
        "id2label",
        "label2id",
        "model_type",
        "problem_type",
        "torch_dtype",
        "transformers_version",
    }
)


def architecture_of(model: nn.Module) -> tuple[str | None, dict[str, Any]]:
    """``(architecture, model_args)``: a timm model's architecture and ``create_model``
    kwargs; a transformers model's type and the config attributes that differ from that
    type's defaults; ``(None, {})`` for anything else."""
    config = getattr(model, "config", None)
    if is_timm_model(model):
        return config.architecture, dict(config.model_args or {})
    if not isinstance(model, PreTrainedModel):
        return None, {}
    defaults = type(config)().to_dict()
    changed = {
        key: value
        for key, value in config.to_dict().items()
        if key not in NOT_ARCHITECTURE_CONFIG_KEYS
        and not key.startswith("_")
        and key in defaults
        and defaults[key] != value
    }
    return config.model_type, changed


def described_name(name: str, architecture: str | None, model_args: dict[str, Any]) -> str:
    """``name``, followed by how it was built when ``model_args`` change its architecture:
    ``vit_tiny_patch16_224 with img_size=32``, ``folder (vit_tiny_patch16_224 with ...)``."""
    if not model_args:
        return name
    built = ", ".join(f"{key}={value}" for key, value in model_args.items())
    if name == architecture:
        return f"{name} with {built}"
    return f"{name} ({architecture} with {built})"


@dataclass
class TrainingSetup:
    """How the student was trained: data, scale, precision, seed and optimiser settings.

    ``epochs`` and ``steps`` are what was trained (the Trainer state's fractional epoch and
    optimizer steps), not what was planned (``num_train_epochs`` or ``max_steps``, among the
    ``hyperparameters``).
    """

    dataset: str
    global_batch_size: int
    world_size: int
    epochs: float
    precision: str
    seed: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    split_sizes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_training_args(
        cls,
        args: TrainingArguments,
        dataset: str,
        *,
        epochs: float,
        steps: int,
        split_sizes: dict[str, int] | None = None,
        optimizer_hyperparameters: Mapping[str, Any] | None = None,
    ) -> TrainingSetup:
        """Read the setup off the ``TrainingArguments`` of the run (in the process that ran it)
        and the ``epochs`` and optimizer ``steps`` it trained.

        ``optimizer_hyperparameters`` (:func:`describe_optimizer`) describe an optimizer the
        run was given instead of the one ``args`` configure: they replace those arguments.

        ``global_batch_size = per_device_train_batch_size * gradient_accumulation_steps *
        world_size``; precision is ``bf16``, ``fp16`` or ``fp32`` (autocast for the half ones).
        The planned length is ``max_steps`` when set (it overrides the epochs), else
        ``num_train_epochs``. ``split_sizes``: images per split (``train``, ``validation``,
        ``test``).
        """
        hyperparameters = {
            name: _plain(getattr(args, name))
            for name in TRAINING_HYPERPARAMETERS
            if getattr(args, name, None) is not None
        }
        if optimizer_hyperparameters is not None:
            for name in OPTIMIZER_ARGUMENTS:
                hyperparameters.pop(name, None)
            hyperparameters.update(optimizer_hyperparameters)
        if args.max_steps > 0:
            hyperparameters["max_steps"] = args.max_steps
        else:
            hyperparameters["num_train_epochs"] = float(args.num_train_epochs)
        return cls(
            dataset=dataset,
            global_batch_size=args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * args.world_size,
            world_size=args.world_size,
            epochs=round(float(epochs), 4),
            precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
            seed=args.seed,
            hyperparameters=hyperparameters,
            steps=steps,
            split_sizes=dict(split_sizes or {}),
        )


def framework_versions() -> dict[str, str]:
    """The installed version of each of :data:`FRAMEWORKS` (``"not installed"`` if absent)."""
    versions = {}
    for name in FRAMEWORKS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


@dataclass
class HubMetadata:
    """What a caller of ``Trainer.create_model_card`` adds to the card's metadata.

    The arguments of that name in transformers' Trainer (each a string or a list):
    ``language``, extra ``tags``, ``tasks`` (the model-index task), ``dataset_tags`` (the
    training datasets' Hub ids) and ``dataset_args`` (their config, in the model-index).
    """

    language: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    dataset_tags: list[str] = field(default_factory=list)
    dataset_args: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        language: str | list[str] | None = None,
        tags: str | list[str] | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> HubMetadata:
        """From the Trainer's arguments, each a string, a list or ``None``."""
        return cls(
            _as_list(language),
            _as_list(tags),
            _as_list(tasks),
            _as_list(dataset_tags),
            _as_list(dataset_args),
        )


def latest_eval_accuracies(
    log_history: list[dict[str, Any]],
) -> tuple[float | None, float | None]:
    """``(eval_accuracy, eval_top5_accuracy)`` of the latest evaluation in a Trainer's
    ``state.log_history``; ``(None, None)`` before any evaluation."""
    for entry in reversed(log_history):
        if "eval_accuracy" in entry:
            return float(entry["eval_accuracy"]), entry.get("eval_top5_accuracy")
    return None, None


def latest_head_accuracies(
    log_history: list[dict[str, Any]],
) -> tuple[float | None, float | None]:
    """``(eval_cls_accuracy, eval_distillation_accuracy)``, each head's top-1 of a
    distillation-token student, from the latest evaluation that has them."""
    for entry in reversed(log_history):
        if "eval_cls_accuracy" in entry:
            return entry["eval_cls_accuracy"], entry.get("eval_distillation_accuracy")
    return None, None


def _plain(value: object) -> object:
    """Enums (optimizer, scheduler names) as their string value, for JSON and the card."""
    return getattr(value, "value", value)


@dataclass
class StudentCard:
    """Everything the model card of a classifier trained with hf-kd states.

    The model was distilled (:attr:`distilled`) when a ``teacher`` is named and
    ``kd_weight > 0``; otherwise it was trained with cross-entropy on the labels only and the
    card names no teacher, speed-up, method or method citation (``teacher`` is ``None`` for a
    classifier trained by :class:`hf_kd.classifier_trainer.ClassifierTrainer`, whose
    ``method`` is ``None`` too). ``ce_weight``, ``kd_weight``, ``warmup_epochs`` and
    ``warmup_schedule`` are the training objective's
    ``total = ce_weight * CE + kd_weight * w(epoch) * loss``; ``loss_hyperparameters`` are
    the distillation loss's own (``build_loss(method, **loss_hyperparameters)``).
    Accuracies are fractions in [0, 1]; ``eval_accuracy`` is measured on ``eval_split`` of
    ``training.dataset``, the evaluations during training (the curves) on
    ``training_eval_split``. The usage snippets load ``repo_id``
    when the student is on the Hub, else ``local_dir``, the folder the card was written to.
    ``framework_versions`` are those of the training run. ``distillation_token``: the
    student has a distillation token (DeiT): its class head learns CE, its distillation head
    the loss, its prediction (``eval_accuracy``) averages both; ``eval_cls_accuracy`` and
    ``eval_distillation_accuracy`` are each head's top-1.
    """

    model_name: str
    student: ModelSummary
    teacher: ModelSummary | None
    method: str | None
    training: TrainingSetup
    loss_hyperparameters: dict[str, Any] = field(default_factory=dict)
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    warmup_epochs: float = 0.0
    warmup_schedule: str = "epoch"
    logit_standardization: bool = False
    eval_accuracy: float | None = None
    eval_top5_accuracy: float | None = None
    eval_split: str = "test"
    training_eval_split: str = "validation"
    teacher_eval_accuracy: float | None = None
    speed: InferenceSpeed | None = None
    transfer_results: list[TransferResult] = field(default_factory=list)
    license: str = "apache-2.0"
    repo_id: str | None = None
    training_curves: str | None = None
    hub_metadata: HubMetadata = field(default_factory=HubMetadata)
    framework_versions: dict[str, str] = field(default_factory=dict)
    local_dir: str | None = None
    distillation_token: bool = False
    eval_cls_accuracy: float | None = None
    eval_distillation_accuracy: float | None = None

    @property
    def distilled(self) -> bool:
        """Whether a teacher's logits entered the training loss (a teacher, ``kd_weight > 0``)."""
        return self.teacher is not None and self.kd_weight > 0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["transfer_results"] = [result.to_dict() for result in self.transfer_results]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentCard:
        data = dict(data)
        data["student"] = ModelSummary(**data["student"])
        data["teacher"] = ModelSummary(**data["teacher"]) if data.get("teacher") else None
        data["training"] = TrainingSetup(**data["training"])
        data["hub_metadata"] = HubMetadata(**data.get("hub_metadata", {}))
        data["speed"] = InferenceSpeed(**data["speed"]) if data.get("speed") else None
        data["transfer_results"] = [
            TransferResult.from_dict(result) for result in data.get("transfer_results", [])
        ]
        return cls(**data)

    def with_transfer_result(self, result: TransferResult) -> StudentCard:
        """A copy with ``result`` added (replacing an earlier one on the same dataset/split)."""
        return dataclasses.replace(
            self, transfer_results=merge_transfer_results(self.transfer_results, result)
        )


# -- metadata --------------------------------------------------------------------------------


def is_hub_id(name: str) -> bool:
    """Whether ``name`` looks like a Hub repo id (``owner/name``) rather than a local path."""
    return re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not Path(name).exists()


def _dataset_type(name: str) -> str:
    return name if is_hub_id(name) else Path(name).name or name


def transfer_eval_result(result: TransferResult) -> EvalResult:
    """The model-index entry of a linear-probe transfer result."""
    return EvalResult(
        task_type=TASK,
        task_name="Linear-probe transfer",
        dataset_type=_dataset_type(result.dataset),
        dataset_name=result.display_name,
        dataset_split=result.eval_split,
        metric_type="accuracy",
        metric_value=round(result.top1_accuracy, 4),
        metric_name="Linear-probe top-1 accuracy",
    )


def card_metadata(card: StudentCard) -> ModelCardData:
    """The YAML metadata: library, task, tags, language, datasets, base model, license and the
    model-index (``hub_metadata`` given to ``create_model_card`` added or taking precedence)."""
    hub = card.hub_metadata
    eval_results = []
    if card.eval_accuracy is not None:
        eval_results.append(
            EvalResult(
                task_type=hub.tasks[0] if hub.tasks else TASK,
                task_name="Image Classification",
                dataset_type=(
                    hub.dataset_tags[0]
                    if hub.dataset_tags
                    else _dataset_type(card.training.dataset)
                ),
                dataset_name=card.training.dataset,
                dataset_args=hub.dataset_args[0] if hub.dataset_args else None,
                dataset_split=card.eval_split,
                metric_type="accuracy",
                metric_value=round(card.eval_accuracy, 4),
                metric_name="Top-1 accuracy",
            )
        )
    eval_results += [transfer_eval_result(result) for result in card.transfer_results]
    distillation_tags = ["knowledge-distillation", card.method]
    if card.logit_standardization:
        distillation_tags.append("logit-standardization")
    tags = [TASK, *(distillation_tags if card.distilled else []), "hf-kd"]
    if card.student.library == "timm":
        tags += ["timm", "transformers"]
    tags += [tag for tag in hub.tags if tag not in tags]
    datasets = hub.dataset_tags or (
        [card.training.dataset] if is_hub_id(card.training.dataset) else None
    )
    return ModelCardData(
        model_name=card.model_name,
        language=hub.language or None,
        library_name=card.student.library,
        pipeline_tag=TASK,
        tags=tags,
        datasets=datasets,
        # the student's own initialisation; never the teacher (not a fine-tune of it)
        base_model=(
            card.student.initialisation
            if card.student.initialisation and is_hub_id(card.student.initialisation)
            else None
        ),
        license=card.license,
        metrics=["accuracy"],
        eval_results=eval_results or None,
    )


# -- body ------------------------------------------------------------------------------------


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def _count(parameters: int | None) -> str:
    if parameters is None:
        return "unknown"
    return f"{parameters / 1e6:.2f}M" if parameters >= 1e5 else f"{parameters / 1e3:.1f}K"


def _value(value: object) -> str:
    return f"`{json.dumps(value)}`" if isinstance(value, (dict, list, bool)) else f"`{value}`"


def template_context(card: StudentCard) -> dict[str, Any]:
    """The variables of the ``student_card.md`` template, formatted for display.

    Without distillation (:attr:`StudentCard.distilled` false) the teacher, its accuracy, the
    speed-up, the method and its citations are ``None`` or empty, the objective lists only
    ``ce_weight`` and ``kd_weight``, and the template leaves out the teacher and method
    sections (the loss hyperparameters among them).
    """
    distilled = card.distilled
    averaged = " of the averaged heads" if card.distillation_token else ""
    model = "Student" if distilled else "Model"
    accuracies = [
        (f"{model} (top-1{averaged})", card.eval_accuracy),
        (f"{model} (top-5{averaged})", card.eval_top5_accuracy),
        ("Student's class head (top-1)", card.eval_cls_accuracy),
        ("Student's distillation head (top-1)", card.eval_distillation_accuracy),
        ("Teacher (top-1)", card.teacher_eval_accuracy if distilled else None),
    ]
    results = [
        (label, card.training.dataset, card.eval_split, _percent(value))
        for label, value in accuracies
        if value is not None
    ]
    results += [
        (
            f"Linear probe ({result.num_classes} classes)",
            result.display_name,
            result.eval_split,
            _percent(result.top1_accuracy),
        )
        for result in card.transfer_results
    ]
    objective = {"ce_weight": card.ce_weight, "kd_weight": card.kd_weight}
    if distilled:
        objective |= {
            "warmup_epochs": card.warmup_epochs,
            "warmup_schedule": card.warmup_schedule,
            "logit_standardization": card.logit_standardization,
        }
    training = card.training
    sizes = " / ".join(f"{split} {size}" for split, size in training.split_sizes.items())
    setup = [
        ("dataset", training.dataset),
        *([("images per split", sizes)] if sizes else []),
        ("global batch size", training.global_batch_size),
        ("world size (processes)", training.world_size),
        ("epochs trained", round(training.epochs, 2)),
        *([("optimizer steps", training.steps)] if training.steps is not None else []),
        ("precision", training.precision),
        ("seed", training.seed),
    ]
    teacher = card.teacher if distilled else None
    return {
        "model_name": card.model_name,
        "model_reference": card.repo_id or card.local_dir or card.model_name,
        "timm_reference": (
            f"hf-hub:{card.repo_id}" if card.repo_id else f"local-dir:{card.local_dir}"
        ),
        "registers_architecture": card.student.architecture in HF_KD_ARCHITECTURES,
        "dataset": training.dataset,
        "student": card.student,
        "distilled": distilled,
        "teacher": teacher,
        "student_parameters": _count(card.student.parameters),
        "teacher_parameters": _count(teacher.parameters) if teacher else None,
        "compression": (
            teacher.parameters / card.student.parameters
            if teacher and teacher.parameters and card.student.parameters
            else None
        ),
        "speed": card.speed if distilled else None,
        "method": method_info(card.method) if distilled else None,
        "method_name": card.method,
        "objective": [(name, _value(value)) for name, value in objective.items()],
        "loss_hyperparameters": [
            (name, _value(value)) for name, value in sorted(card.loss_hyperparameters.items())
        ],
        "training_hyperparameters": [
            (name, _value(value)) for name, value in sorted(training.hyperparameters.items())
        ],
        "setup": [(name, _value(value)) for name, value in setup],
        "results": results,
        "transfer_results": card.transfer_results,
        "training_curves": card.training_curves,
        "is_timm": card.student.library == "timm",
        "framework_versions": card.framework_versions,
        "eval_splits": _eval_splits(card),
        "distillation_token": card.distillation_token,
        "citations": (
            citations_for(
                card.method,
                logit_standardization=card.logit_standardization,
                distillation_token=card.distillation_token,
            )
            if distilled
            else []
        ),
    }


def _eval_splits(card: StudentCard) -> str:
    """Which split the plotted evaluations used: ``training_eval_split`` during training,
    then ``eval_split`` for the evaluations after it."""
    if card.eval_split == card.training_eval_split:
        return f"the {card.eval_split} split"
    return (
        f"the {card.training_eval_split} split during training, the {card.eval_split} split "
        "after it"
    )


def render_model_card(card: StudentCard, template_path: str | Path | None = None) -> str:
    """The ``README.md`` text of ``card``: YAML metadata then the rendered template body."""
    template_path = Path(template_path) if template_path is not None else DEFAULT_TEMPLATE
    if not template_path.is_file():
        raise ValueError(f"model card template not found: {template_path}")
    model_card = ModelCard.from_template(
        card_metadata(card), template_path=str(template_path), **template_context(card)
    )
    return str(model_card)


# -- files -----------------------------------------------------------------------------------


def write_model_card(
    card: StudentCard,
    output_dir: str | Path,
    *,
    log_history: list[dict[str, Any]] | None = None,
    template_path: str | Path | None = None,
) -> StudentCard:
    """Write ``README.md``, ``student_card.json`` and (from ``log_history``) the curves PNG.

    Returns the card as written (``local_dir`` set to ``output_dir`` unless it names a Hub
    repo, ``training_curves`` when the plot was drawn).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    card = dataclasses.replace(card, local_dir=None if card.repo_id else str(output_dir))
    if log_history and plot_training_curves(
        log_history,
        output_dir / TRAINING_CURVES_FILE,
        final_eval_split=card.eval_split,
        training_eval_split=card.training_eval_split,
    ):
        card = dataclasses.replace(card, training_curves=TRAINING_CURVES_FILE)
    (output_dir / CARD_DATA_FILE).write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    (output_dir / "README.md").write_text(render_model_card(card, template_path), encoding="utf-8")
    return card


def read_student_card(model_name_or_path: str | Path) -> StudentCard | None:
    """The ``student_card.json`` of a local folder or Hub repo; ``None`` if it has none."""
    local = Path(model_name_or_path)
    if local.is_dir():
        path = local / CARD_DATA_FILE
        return StudentCard.from_dict(json.loads(path.read_text())) if path.is_file() else None
    try:
        path = hf_hub_download(str(model_name_or_path), CARD_DATA_FILE)
    except RemoteEntryNotFoundError:
        return None
    return StudentCard.from_dict(json.loads(Path(path).read_text()))


def write_card_with_transfer_result(
    model_name_or_path: str | Path, result: TransferResult, output_dir: str | Path
) -> list[str]:
    """Add a transfer result to the model's card, written to ``output_dir``.

    A student with ``student_card.json`` gets its whole card re-rendered (the result joins
    the model-index and the results table; its training-curves PNG is copied along when it
    is local). Any other model gets the result appended to the model-index of its existing
    ``README.md`` (or of a new minimal card). Returns the names of the files written.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    card = read_student_card(model_name_or_path)
    if card is not None:
        card = card.with_transfer_result(result)
        written = [CARD_DATA_FILE, "README.md"]
        source_curves = Path(model_name_or_path) / TRAINING_CURVES_FILE
        target_curves = output_dir / TRAINING_CURVES_FILE
        if card.training_curves and source_curves.is_file() and source_curves != target_curves:
            shutil.copyfile(source_curves, target_curves)
            written.append(TRAINING_CURVES_FILE)
        write_model_card(card, output_dir)
        return written
    model_card = _existing_card(model_name_or_path)
    model_card.data.model_name = model_card.data.model_name or Path(str(model_name_or_path)).name
    model_card.data.eval_results = [
        *(model_card.data.eval_results or []),
        transfer_eval_result(result),
    ]
    model_card.save(output_dir / "README.md")
    return ["README.md"]


def _existing_card(model_name_or_path: str | Path) -> ModelCard:
    readme = Path(model_name_or_path) / "README.md"
    if readme.is_file():
        return ModelCard.load(readme)
    if not Path(model_name_or_path).is_dir():
        try:
            return ModelCard.load(str(model_name_or_path))
        except RemoteEntryNotFoundError:
            pass
    return ModelCard(f"---\nmodel_name: {Path(str(model_name_or_path)).name}\n---\n")
