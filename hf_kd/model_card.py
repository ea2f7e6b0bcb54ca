"""Model cards of distilled students: what was distilled, how, and how well it does.

:class:`StudentCard` holds everything a card states (teacher -> student, parameter counts,
measured speed-up, method and citation, every hyperparameter, the training setup, eval and
transfer accuracy). :func:`render_model_card` turns it into a ``README.md``: YAML metadata
with a ``model-index`` (built with ``huggingface_hub.ModelCardData``, so ``ModelCard``
parses it back) and a body rendered from the Jinja template ``student_card.md`` (package
data in ``hf_kd/templates/``, linked from the repository's ``model_cards/``).
:func:`write_model_card` writes the card, its training-curves PNG and ``student_card.json``
(the card's data, so later results such as transfer evaluation can re-render it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import EvalResult, ModelCard, ModelCardData, hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError
from torch import nn
from transformers import PreTrainedModel, TrainingArguments

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

# TrainingArguments fields a card lists as training hyperparameters (when set)
TRAINING_HYPERPARAMETERS = (
    "learning_rate",
    "weight_decay",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "lr_scheduler_type",
    "warmup_steps",
    "max_grad_norm",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "label_smoothing_factor",
)


@dataclass
class ModelSummary:
    """A model as a card names it: Hub id, path or architecture, size and library.

    ``parameters`` and ``library`` are ``None`` when unknown (a teacher seen only through
    its cached logits).
    """

    name: str
    parameters: int | None
    library: Literal["timm", "transformers"] | None

    @classmethod
    def of(cls, model: nn.Module, name: str | None = None) -> ModelSummary:
        """Summarise ``model``; ``name`` defaults to :func:`model_name_of`."""
        if is_timm_model(model):
            library = "timm"
        else:
            library = "transformers" if isinstance(model, PreTrainedModel) else None
        return cls(name or model_name_of(model), count_parameters(model), library)


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


@dataclass
class TrainingSetup:
    """How the student was trained: data, scale, precision, seed and optimiser settings."""

    dataset: str
    global_batch_size: int
    world_size: int
    epochs: float
    precision: str
    seed: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_training_args(cls, args: TrainingArguments, dataset: str) -> TrainingSetup:
        """Read the setup off the ``TrainingArguments`` of the run (in the process that ran it).

        ``global_batch_size = per_device_train_batch_size * gradient_accumulation_steps *
        world_size``; precision is ``bf16``, ``fp16`` or ``fp32`` (autocast for the half ones).
        """
        hyperparameters = {
            name: _plain(getattr(args, name))
            for name in TRAINING_HYPERPARAMETERS
            if getattr(args, name, None) is not None
        }
        if args.max_steps > 0:
            hyperparameters["max_steps"] = args.max_steps
        return cls(
            dataset=dataset,
            global_batch_size=args.per_device_train_batch_size
            * args.gradient_accumulation_steps
            * args.world_size,
            world_size=args.world_size,
            epochs=float(args.num_train_epochs),
            precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
            seed=args.seed,
            hyperparameters=hyperparameters,
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
    """Everything the model card of a distilled student states.

    ``ce_weight``, ``kd_weight``, ``warmup_epochs`` and ``warmup_schedule`` are the training
    objective's ``total = ce_weight * CE + kd_weight * w(epoch) * loss``;
    ``loss_hyperparameters`` are the distillation loss's own (``build_loss(method,
    **loss_hyperparameters)``). Accuracies are fractions in [0, 1]; ``eval_accuracy`` is
    measured on ``eval_split`` of ``training.dataset``. ``distillation_token``: the student
    has a distillation token (DeiT): its class head learns CE, its distillation head the
    loss, its prediction (``eval_accuracy``) averages both; ``eval_cls_accuracy`` and
    ``eval_distillation_accuracy`` are each head's top-1.
    """

    model_name: str
    student: ModelSummary
    teacher: ModelSummary
    method: str
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
    teacher_eval_accuracy: float | None = None
    speed: InferenceSpeed | None = None
    transfer_results: list[TransferResult] = field(default_factory=list)
    license: str = "apache-2.0"
    repo_id: str | None = None
    training_curves: str | None = None
    distillation_token: bool = False
    eval_cls_accuracy: float | None = None
    eval_distillation_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["transfer_results"] = [result.to_dict() for result in self.transfer_results]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentCard:
        data = dict(data)
        data["student"] = ModelSummary(**data["student"])
        data["teacher"] = ModelSummary(**data["teacher"])
        data["training"] = TrainingSetup(**data["training"])
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
    """The YAML metadata: library, task, tags, datasets, base model, license, model-index."""
    eval_results = []
    if card.eval_accuracy is not None:
        eval_results.append(
            EvalResult(
                task_type=TASK,
                task_name="Image Classification",
                dataset_type=_dataset_type(card.training.dataset),
                dataset_name=card.training.dataset,
                dataset_split=card.eval_split,
                metric_type="accuracy",
                metric_value=round(card.eval_accuracy, 4),
                metric_name="Top-1 accuracy",
            )
        )
    eval_results += [transfer_eval_result(result) for result in card.transfer_results]
    tags = [TASK, "knowledge-distillation", card.method, "hf-kd"]
    if card.logit_standardization:
        tags.append("logit-standardization")
    if card.student.library == "timm":
        tags += ["timm", "transformers"]
    return ModelCardData(
        model_name=card.model_name,
        library_name=card.student.library,
        pipeline_tag=TASK,
        tags=tags,
        datasets=[card.training.dataset] if is_hub_id(card.training.dataset) else None,
        base_model=card.teacher.name if is_hub_id(card.teacher.name) else None,
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
    """The variables of the ``student_card.md`` template, formatted for display."""
    method = method_info(card.method)
    averaged = " of the averaged heads" if card.distillation_token else ""
    accuracies = [
        (f"Student (top-1{averaged})", card.eval_accuracy),
        (f"Student (top-5{averaged})", card.eval_top5_accuracy),
        ("Student's class head (top-1)", card.eval_cls_accuracy),
        ("Student's distillation head (top-1)", card.eval_distillation_accuracy),
        ("Teacher (top-1)", card.teacher_eval_accuracy),
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
    objective = {
        "ce_weight": card.ce_weight,
        "kd_weight": card.kd_weight,
        "warmup_epochs": card.warmup_epochs,
        "warmup_schedule": card.warmup_schedule,
        "logit_standardization": card.logit_standardization,
    }
    training = card.training
    setup = [
        ("dataset", training.dataset),
        ("global batch size", training.global_batch_size),
        ("world size (processes)", training.world_size),
        ("epochs", training.epochs),
        ("precision", training.precision),
        ("seed", training.seed),
    ]
    return {
        "model_name": card.model_name,
        "repo_id": card.repo_id or card.model_name,
        "dataset": training.dataset,
        "student": card.student,
        "teacher": card.teacher,
        "student_parameters": _count(card.student.parameters),
        "teacher_parameters": _count(card.teacher.parameters),
        "compression": (
            card.teacher.parameters / card.student.parameters
            if card.teacher.parameters and card.student.parameters
            else None
        ),
        "speed": card.speed,
        "method": method,
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
        "distillation_token": card.distillation_token,
        "citations": citations_for(
            card.method,
            logit_standardization=card.logit_standardization,
            distillation_token=card.distillation_token,
        ),
    }


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

    Returns the card as written (``training_curves`` set when the plot was drawn).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if log_history and plot_training_curves(log_history, output_dir / TRAINING_CURVES_FILE):
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
