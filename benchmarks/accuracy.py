"""Accuracy of every distillation method under one budget on CIFAR-100, and MCLD ablations.

One teacher is trained once; its logits are cached on ``num_views`` replayed augmented views
of every training image (pad-and-crop + flip drawn once per (image, view); each time a
student sees an image it gets one of those views, picked at random, and the teacher's
logits of exactly that view). Then one student per (method, seed) is trained with
:class:`hf_kd.trainer.DistillationTrainer` at the method's CIFAR-100 preset; the CE-only
student is the same run with ``kd_weight=0``. Every finished run writes its own JSON record
under ``benchmarks/results/accuracy_runs/`` at once, and a rerun skips the finished ones, so
the benchmark resumes where it stopped. ``--report`` (and the end of a run) aggregates the
records into ``benchmarks/results/accuracy.json``, a bar chart and the accuracy section of
``benchmarks/RESULTS.md``.

Two tiers (``--tier``):

* ``cpu`` (default): images downsampled once to 16x16 (2x2 box filter) and kept as uint8
  tensors, a small CIFAR ResNet teacher and a several times smaller student, a few epochs,
  SGD with a cosine schedule. A reduced budget: not comparable with the papers' 240-epoch
  numbers.
* ``full``: the literature recipe for a GPU: ResNet32x4 -> ResNet8x4 at 32x32, SGD lr 0.05,
  momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, lr x0.1 at epochs 150/180/210,
  the teacher trained the same way.

Warm-ups are scaled with the schedule: a preset's 20 warm-up epochs of 240 (DKD, RLD; MCLD's
category warm-up) become ``20 * epochs / 240`` epochs, ramped per step. hf-kd counts epochs
from 1, so a warm-up shorter than one epoch is already complete at the first step.

Usage::

    python benchmarks/accuracy.py                      # CPU tier, resumes
    python benchmarks/accuracy.py --report             # aggregate the finished records
    python benchmarks/accuracy.py --tier full --dataset_name uoft-cs/cifar100
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch import Tensor
from transformers import PreTrainedModel, TrainerCallback, TrainingArguments, set_seed

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from hf_kd.arguments import DistillationArguments  # noqa: E402
from hf_kd.classifier_trainer import ClassifierTrainer  # noqa: E402
from hf_kd.data import (  # noqa: E402
    DecodedImages,
    DecodedSplit,
    DeviceViews,
    collate_decoded_batch,
    decode_split,
    load_image_dataset,
)
from hf_kd.data.device_views import IMAGES_COLUMN  # noqa: E402
from hf_kd.data.transforms import PADDING_FRACTION  # noqa: E402
from hf_kd.logit_cache import (  # noqa: E402
    TeacherLogitCache,
    cache_teacher_logits,
    load_teacher_logit_cache,
    with_cached_teacher_logits,
)
from hf_kd.losses import preset  # noqa: E402
from hf_kd.models import count_parameters, load_classifier  # noqa: E402
from hf_kd.models_cifar import CIFAR100_MEAN, CIFAR100_STD  # noqa: E402
from hf_kd.preprocessing import ImagePreprocessing  # noqa: E402
from hf_kd.trainer import DistillationTrainer  # noqa: E402

logger = logging.getLogger("benchmarks.accuracy")

# the shared data folder next to the checkout (../shared/data/cifar100) or higher up; the Hub
# dataset when there is none
DEFAULT_DATASET = next(
    (
        str(folder / "shared" / "data" / "cifar100")
        for folder in REPO_ROOT.parents
        if (folder / "shared" / "data" / "cifar100").is_dir()
    ),
    "uoft-cs/cifar100",
)
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DATA_CACHE_DIR = REPO_ROOT / "outputs" / "accuracy_data"
PAPER_SCHEDULE_EPOCHS = 240
TEACHER_SAVE_STEPS = 100
VIEW_SEED = 1234
DOWNSAMPLING = "box"


@dataclass(frozen=True)
class TierConfig:
    """Everything that defines one budget: data, models, schedule, views, seeds."""

    name: str
    title: str
    image_size: int
    teacher_architecture: str
    student_architecture: str
    teacher_epochs: float
    student_epochs: float
    batch_size: int
    learning_rate: float
    momentum: float
    weight_decay: float
    schedule: str  # "cosine" or "multistep"
    milestones: tuple[int, ...] = ()
    pad: int = 2  # random-crop padding in pixels: 1/8 of the side, as hf_kd.data draws it
    num_views: int = 4  # 0: live teacher, fresh augmentation every epoch
    seeds: tuple[int, ...] = (0, 1, 2)
    torch_threads: int = 2
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adamw"
    # keyword arguments of timm.create_model for the student (e.g. a small ViT's sizes)
    student_model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pad != round(self.image_size * PADDING_FRACTION):
            raise ValueError(
                f"pad {self.pad} is not 1/8 of image_size {self.image_size}, the shift that "
                "hf_kd.data draws"
            )

    @property
    def stem(self) -> str:
        """File names of this tier's results: ``accuracy`` (cpu), ``accuracy_full``, ..."""
        return "accuracy" if self.name == "cpu" else f"accuracy_{self.name}"

    @property
    def report_section(self) -> str:
        return f"## Accuracy on CIFAR-100 ({self.title})"

    def scaled_warmup(self, paper_epochs: float) -> float:
        """A warm-up of ``paper_epochs`` of 240, scaled to this schedule's length."""
        return paper_epochs * self.student_epochs / PAPER_SCHEDULE_EPOCHS


TIERS = {
    "cpu": TierConfig(
        name="cpu",
        title="CPU budget",
        image_size=16,
        teacher_architecture="cifar_resnet14x2",
        student_architecture="cifar_resnet8",
        teacher_epochs=20,
        student_epochs=6,
        batch_size=128,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
    ),
    "full": TierConfig(
        name="full",
        title="full recipe",
        image_size=32,
        teacher_architecture="cifar_resnet32x4",
        student_architecture="cifar_resnet8x4",
        teacher_epochs=240,
        student_epochs=240,
        batch_size=64,
        learning_rate=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="multistep",
        milestones=(150, 180, 210),
        pad=4,
        num_views=0,
    ),
}


@dataclass(frozen=True)
class StudentSpec:
    """One student configuration: a method at its preset, plus optional loss overrides."""

    name: str
    method: str
    logit_standardization: bool = False
    ce_only: bool = False
    loss_overrides: dict[str, Any] = field(default_factory=dict)
    # other DistillationArguments of this student (e.g. distillation_token_loss)
    argument_overrides: dict[str, Any] = field(default_factory=dict)


METHODS = (
    StudentSpec("ce", "kd", ce_only=True),
    StudentSpec("kd", "kd"),
    StudentSpec("dkd", "dkd"),
    StudentSpec("kd_ls", "kd", logit_standardization=True),
    StudentSpec("normkd", "normkd"),
    StudentSpec("rld", "rld"),
    StudentSpec("mcld", "mcld"),
)

# Each reconstructed MCLD option of spec 6.3 and each term removed; on top of the defaults.
MCLD_ABLATIONS = (
    StudentSpec("mcld_similarity_cosine", "mcld", loss_overrides={"similarity": "cosine"}),
    StudentSpec("mcld_similarity_dot", "mcld", loss_overrides={"similarity": "dot"}),
    StudentSpec("mcld_tau_0.05", "mcld", loss_overrides={"tau": 0.05}),
    StudentSpec("mcld_tau_0.2", "mcld", loss_overrides={"tau": 0.2}),
    StudentSpec("mcld_target_mask_off", "mcld", loss_overrides={"target_mask": False}),
    StudentSpec(
        "mcld_target_mask_target_entry",
        "mcld",
        loss_overrides={"target_mask_variant": "target_entry"},
    ),
    StudentSpec(
        "mcld_sample_positives_teacher_prediction",
        "mcld",
        loss_overrides={"sample_positives": "teacher_prediction"},
    ),
    StudentSpec(
        "mcld_category_warmup_unscaled_20", "mcld", loss_overrides={"category_warmup_epochs": 20}
    ),
    StudentSpec("mcld_symmetric_instance", "mcld", loss_overrides={"symmetric_instance": True}),
    StudentSpec("mcld_no_instance", "mcld", loss_overrides={"instance_weight": 0.0}),
    StudentSpec("mcld_no_sample", "mcld", loss_overrides={"sample_weight": 0.0}),
    StudentSpec("mcld_no_category", "mcld", loss_overrides={"category_weight": 0.0}),
)


ABLATION_OVERRIDES = {spec.name: spec.loss_overrides for spec in MCLD_ABLATIONS}
README_START = "<!-- accuracy-table:start -->"
README_END = "<!-- accuracy-table:end -->"


# ---- data ----


@dataclass
class TensorData:
    """The train and test splits decoded once to uint8 ``[N, 3, H, W]`` at the tier's size
    (:func:`hf_kd.data.decode_split`), with the training split itself (the teacher-logit
    cache's identity) and the class names."""

    train: DecodedSplit
    test: DecodedSplit
    train_split: Dataset
    label_names: tuple[str, ...]
    cache_dir: Path

    @property
    def train_images(self) -> Tensor:
        return self.train.images

    @property
    def train_labels(self) -> Tensor:
        return self.train.labels

    @property
    def test_images(self) -> Tensor:
        return self.test.images

    @property
    def test_labels(self) -> Tensor:
        return self.test.labels


def preprocessing_of(tier: TierConfig) -> ImagePreprocessing:
    """The models' input: the tier's size, CIFAR-100 normalisation, images box-downsampled
    to it (a 2x2 box filter from 32x32 to 16x16)."""
    return ImagePreprocessing(
        image_size=(tier.image_size, tier.image_size),
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        interpolation=DOWNSAMPLING,
    )


def load_tensor_data(
    dataset_name: str, image_size: int, cache_dir: Path, limit: int | None = None
) -> TensorData:
    """Decode the train and test splits once (the first ``limit`` rows of each, if given),
    box-downsampled to ``image_size``; cached as uint8 in ``cache_dir`` by the library."""
    data = load_image_dataset(dataset_name, eval_split="test")
    splits = {
        name: data.splits[name] if limit is None else data.splits[name].select(range(limit))
        for name in ("train", "validation")
    }
    size = (image_size, image_size)
    return TensorData(
        train=decode_split(splits["train"], size, DOWNSAMPLING, cache_dir=cache_dir),
        test=decode_split(splits["validation"], size, DOWNSAMPLING, cache_dir=cache_dir),
        train_split=splits["train"],
        label_names=data.label_names,
        cache_dir=cache_dir,
    )


def model_inputs(images: Tensor, tier: TierConfig) -> Tensor:
    """Normalised model inputs of uint8 views, without augmentation."""
    return DeviceViews(preprocessing_of(tier))({IMAGES_COLUMN: images})["pixel_values"]


# ---- training ----


def build_optimizer(
    model: torch.nn.Module, tier: TierConfig, epochs: float, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The tier's optimizer (SGD with momentum, or AdamW) with its schedule: per-step cosine
    to 0, or x0.1 at each milestone epoch."""
    if tier.optimizer == "adamw":
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=tier.learning_rate, weight_decay=tier.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=tier.learning_rate,
            momentum=tier.momentum,
            weight_decay=tier.weight_decay,
        )
    total_steps = max(1, math.ceil(epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if tier.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(step / total_steps, 1.0)))
        epoch = step / steps_per_epoch
        return 0.1 ** sum(epoch >= milestone for milestone in tier.milestones)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def common_training_kwargs(tier: TierConfig, epochs: float, seed: int, output_dir: Path) -> dict:
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": tier.batch_size,
        "num_train_epochs": epochs,
        "seed": seed,
        "logging_steps": 50,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "remove_unused_columns": False,
        "use_cpu": not torch.cuda.is_available(),
    }


@torch.no_grad()
def test_accuracy(
    model: PreTrainedModel, data: TensorData, tier: TierConfig, batch_size: int = 1000
) -> float:
    """Top-1 accuracy (%) on the full test set, centre view (no augmentation)."""
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(data.test_labels), batch_size):
        images = model_inputs(data.test_images[start : start + batch_size].to(device), tier)
        logits = model(pixel_values=images).logits
        labels = data.test_labels[start : start + batch_size].to(device)
        correct += int((logits.argmax(dim=1) == labels).sum())
    return 100.0 * correct / len(data.test_labels)


class WallTimeAtCheckpoints(TrainerCallback):
    """Keeps the training wall time in a file, updated at every checkpoint, so a resumed
    run adds to the time already spent up to the checkpoint it restarts from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.before = json.loads(path.read_text())["wall_time_s"] if path.exists() else 0.0
        self.started = time.perf_counter()

    def total(self) -> float:
        return self.before + time.perf_counter() - self.started

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.path.write_text(json.dumps({"wall_time_s": self.total(), "step": state.global_step}))


def train_teacher(tier: TierConfig, data: TensorData, work_dir: Path) -> tuple[Path, dict]:
    """Train the teacher with plain cross-entropy (transformers' Trainer) and save it.

    It checkpoints every ``TEACHER_SAVE_STEPS`` steps and resumes from the last checkpoint.
    """
    set_seed(0)
    teacher = load_classifier(
        tier.teacher_architecture,
        id2label=dict(enumerate(data.label_names)),
        pretrained=False,
    )
    dataset = DecodedImages(data.train, train=True, augment="default")
    steps_per_epoch = math.ceil(len(dataset) / tier.batch_size)
    run_dir = work_dir / "teacher_run"
    kwargs = common_training_kwargs(tier, tier.teacher_epochs, 0, run_dir)
    kwargs.update(save_strategy="steps", save_steps=TEACHER_SAVE_STEPS, save_total_limit=1)
    wall_time = WallTimeAtCheckpoints(work_dir / "teacher_wall_time.json")
    trainer = ClassifierTrainer(
        model=teacher,
        args=TrainingArguments(**kwargs),
        train_dataset=dataset,
        data_collator=collate_decoded_batch,
        preprocessing=preprocessing_of(tier),
        optimizers=build_optimizer(teacher, tier, tier.teacher_epochs, steps_per_epoch),
        callbacks=[wall_time],
    )
    resume = any(run_dir.glob("checkpoint-*"))
    if not resume:
        wall_time.before = 0.0
    trainer.train(resume_from_checkpoint=resume or None)
    teacher_dir = work_dir / "teacher"
    teacher.save_pretrained(teacher_dir)
    record = {
        "run": "teacher",
        "architecture": tier.teacher_architecture,
        "parameters": count_parameters(teacher),
        "top1": test_accuracy(teacher, data, tier),
        "wall_time_s": wall_time.total(),
        "epochs": tier.teacher_epochs,
    }
    return teacher_dir, record


def cached_teacher_logits(
    teacher: PreTrainedModel, data: TensorData, tier: TierConfig, work_dir: Path
) -> TeacherLogitCache:
    """The teacher's logits of the tier's replayed views (``num_views`` per image, seed
    ``VIEW_SEED``), made once on the decode-once path by :func:`hf_kd.cache_teacher_logits`
    and reloaded (checked against this teacher and split) afterwards."""
    path = work_dir / f"teacher_logits_{tier.num_views}views"
    if (path / "metadata.json").exists():
        return load_teacher_logit_cache(path, teacher=teacher, dataset_split=data.train_split)
    return cache_teacher_logits(
        teacher,
        data.train_split,
        preprocessing=preprocessing_of(tier),
        output_path=path,
        split_name="train",
        batch_size=1000,
        augment="default",
        num_views=tier.num_views,
        view_seed=VIEW_SEED,
        data_path="decoded",
        decoded_cache_dir=data.cache_dir,
        overwrite=True,
    )


def distillation_arguments(
    spec: StudentSpec, tier: TierConfig, seed: int, output_dir: Path
) -> DistillationArguments:
    """The hf-kd arguments of one student: the method's CIFAR-100 preset, warm-ups scaled."""
    common = common_training_kwargs(tier, tier.student_epochs, seed, output_dir)
    if spec.ce_only:
        return DistillationArguments(
            **common,
            **spec.argument_overrides,
            distillation_method=spec.method,
            ce_weight=1.0,
            kd_weight=0.0,
        )
    chosen = preset(spec.method, "cifar100", logit_standardization=spec.logit_standardization)
    loss_kwargs = dict(spec.loss_overrides)
    if spec.method == "mcld":
        loss_kwargs.setdefault("category_warmup_epochs", tier.scaled_warmup(20))
    return DistillationArguments(
        **common,
        **spec.argument_overrides,
        distillation_method=spec.method,
        distillation_preset="cifar100",
        logit_standardization=spec.logit_standardization,
        warmup_epochs=tier.scaled_warmup(chosen.warmup_epochs),
        warmup_schedule="linear",
        loss_kwargs=loss_kwargs or None,
    )


def train_student(
    spec: StudentSpec,
    seed: int,
    tier: TierConfig,
    data: TensorData,
    work_dir: Path,
    teacher_logits: TeacherLogitCache | None = None,
    teacher: PreTrainedModel | None = None,
    extra_metrics: Callable[[PreTrainedModel, TensorData], dict[str, Any]] | None = None,
) -> dict:
    """Distil one student; its record.

    ``teacher_logits``: the cache of replayed views (:func:`cached_teacher_logits`); without
    it, fresh augmentation every epoch and the live ``teacher``. ``extra_metrics(student,
    data)``: more entries for the record, measured on the trained student.
    """
    args = distillation_arguments(spec, tier, seed, work_dir / f"student_{spec.name}")
    set_seed(seed)
    student = load_classifier(
        tier.student_architecture,
        id2label=dict(enumerate(data.label_names)),
        pretrained=False,
        model_kwargs=tier.student_model_kwargs,
    )
    dataset = DecodedImages(data.train, train=True, augment="default")
    if teacher_logits is not None:
        dataset = with_cached_teacher_logits(dataset, teacher_logits, student=student)
    steps_per_epoch = math.ceil(len(dataset) / tier.batch_size)
    started = time.perf_counter()
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher if teacher_logits is None else None,
        args=args,
        train_dataset=dataset,
        data_collator=collate_decoded_batch,
        optimizers=build_optimizer(student, tier, tier.student_epochs, steps_per_epoch),
        student_preprocessing=preprocessing_of(tier),
    )
    trainer.train()
    wall = time.perf_counter() - started
    objective = trainer.objective
    record = {
        "run": f"{spec.name}_seed{seed}",
        "name": spec.name,
        "method": spec.method,
        "seed": seed,
        "architecture": tier.student_architecture,
        "parameters": count_parameters(student),
        "top1": test_accuracy(student, data, tier),
        "wall_time_s": wall,
        "epochs": tier.student_epochs,
        "objective": {
            "method": objective.method,
            "ce_weight": objective.ce_weight,
            "kd_weight": objective.kd_weight,
            "warmup_epochs": objective.warmup_epochs,
            "warmup_schedule": objective.warmup_schedule,
            "loss_kwargs": objective.loss_kwargs,
        },
    }
    if extra_metrics is not None:
        record.update(extra_metrics(student, data))
    return record


# ---- records and schedule ----


def replace_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Create ``path`` with ``write`` (called on a temporary file of the same suffix) and a
    rename, so two benchmark processes sharing a folder never see a half-written file."""
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    write(partial)
    os.replace(partial, path)


def write_atomically(path: Path, text: str) -> None:
    replace_atomically(path, lambda partial: partial.write_text(text))


def record_path(runs_dir: Path, run: str) -> Path:
    return runs_dir / f"{run}.json"


def write_record(runs_dir: Path, record: dict, tier: TierConfig, dataset_name: str) -> None:
    runs_dir.mkdir(parents=True, exist_ok=True)
    record = {
        **record,
        "tier": asdict(tier),
        "dataset": os.path.basename(dataset_name.rstrip("/")),
        "torch_threads": torch.get_num_threads(),
        "device": describe_device(),
        "versions": library_versions(),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_atomically(record_path(runs_dir, record["run"]), json.dumps(record, indent=2) + "\n")
    logger.info("%s: top-1 %.2f%% in %.0f s", record["run"], record["top1"], record["wall_time_s"])


def library_versions() -> dict[str, str]:
    """The versions a run's numbers depend on (another torch may round differently)."""
    import timm
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
    }


def describe_device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def planned_runs(tier: TierConfig) -> list[tuple[StudentSpec, int]]:
    """Priority order: every method at every seed (seed by seed), then every MCLD ablation at
    every seed (seed by seed), so each ablation is compared with the default on the same
    seeds."""
    plan = [(spec, seed) for seed in tier.seeds for spec in METHODS]
    plan += [(spec, seed) for seed in tier.seeds for spec in MCLD_ABLATIONS]
    return plan


def run_benchmark(
    tier: TierConfig,
    dataset_name: str,
    work_dir: Path,
    results_dir: Path,
    limit: int | None = None,
    only: Sequence[str] | None = None,
    readme: Path | None = None,
    ablation_seeds: Sequence[int] = (),
    data_cache_dir: Path = DATA_CACHE_DIR,
) -> None:
    """Train the teacher (once), cache its logits, then every planned student run not yet
    recorded (only those named in ``only``, if given); with ``ablation_seeds``, also the
    default MCLD and its ablations at those extra seeds, to confirm a small difference."""
    runs_dir = results_dir / f"{tier.stem}_runs"
    data = load_tensor_data(dataset_name, tier.image_size, data_cache_dir, limit)
    teacher_dir = work_dir / "teacher"
    if not record_path(runs_dir, "teacher").exists() or not teacher_dir.exists():
        teacher_dir, record = train_teacher(tier, data, work_dir)
        write_record(runs_dir, record, tier, dataset_name)
    teacher = load_classifier(str(teacher_dir))
    cached = None
    if tier.num_views > 0:
        cached = cached_teacher_logits(teacher, data, tier, work_dir)
        teacher = None
    default_mcld = next(spec for spec in METHODS if spec.name == "mcld")
    extra = [(spec, seed) for seed in ablation_seeds for spec in (default_mcld, *MCLD_ABLATIONS)]
    for spec, seed in [*planned_runs(tier), *extra]:
        if record_path(runs_dir, f"{spec.name}_seed{seed}").exists():
            continue
        if only is not None and spec.name not in only:
            continue
        record = train_student(spec, seed, tier, data, work_dir, cached, teacher)
        write_record(runs_dir, record, tier, dataset_name)
        write_report(results_dir, tier, readme)


# ---- report ----


def load_records(runs_dir: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(runs_dir.glob("*.json"))}


def summarise(records: dict[str, dict], tier: TierConfig) -> dict[str, Any]:
    """Teacher, per-method mean/std over seeds, ablations and what is still pending."""
    students: dict[str, list[dict]] = {}
    for run, record in records.items():
        if run != "teacher":
            students.setdefault(record["name"], []).append(record)
    summary_rows = {}
    for name, runs in students.items():
        runs = sorted(runs, key=lambda run: run["seed"])
        accuracies = [run["top1"] for run in runs]
        summary_rows[name] = {
            "method": runs[0]["method"],
            "seeds": [run["seed"] for run in runs],
            "top1": accuracies,
            "top1_mean": statistics.mean(accuracies),
            "top1_std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
            "wall_time_s_mean": statistics.mean(run["wall_time_s"] for run in runs),
            "objective": runs[0]["objective"],
        }
    pending = [
        f"{spec.name}_seed{seed}"
        for spec, seed in planned_runs(tier)
        if f"{spec.name}_seed{seed}" not in records
    ]
    if "teacher" not in records:
        pending.insert(0, "teacher")
    return {
        "configuration": asdict(tier),
        "teacher": records.get("teacher"),
        "methods": {
            spec.name: summary_rows[spec.name] for spec in METHODS if spec.name in summary_rows
        },
        "mcld_ablations": {
            spec.name: {
                **summary_rows[spec.name],
                "delta_vs_default": ablation_deltas(
                    summary_rows[spec.name], summary_rows.get("mcld")
                ),
            }
            for spec in MCLD_ABLATIONS
            if spec.name in summary_rows
        },
        "pending": pending,
        "device": ", ".join(
            sorted(
                {
                    record.get("device", f"CPU ({record.get('torch_threads')} torch threads)")
                    for record in records.values()
                }
            )
        )
        or "none yet",
    }


def _accuracy_cell(row: dict) -> str:
    if row["top1_std"] is None:
        return f"{row['top1_mean']:.2f} (n=1)"
    return f"{row['top1_mean']:.2f} ± {row['top1_std']:.2f} (n={len(row['top1'])})"


def markdown_report(summary: dict, tier_config: TierConfig, chart_name: str) -> str:
    tier = summary["configuration"]
    teacher = summary["teacher"]
    if tier["image_size"] == 32:
        resolution = "CIFAR-100 at its native 32x32"
    else:
        resolution = (
            f"CIFAR-100 downsampled to {tier['image_size']}x{tier['image_size']} (2x2 box filter)"
        )
    if tier["num_views"] > 0:
        teacher_signal = f"teacher logits cached on {tier['num_views']} replayed views per image"
    else:
        teacher_signal = "live teacher on fresh augmentation"
    budget = (
        "Literature recipe"
        if tier["student_epochs"] >= PAPER_SCHEDULE_EPOCHS
        else "Reduced budget, **not comparable with the papers' 240-epoch numbers**"
    )
    lines = [
        tier_config.report_section,
        "",
        f"{budget}. Configuration: {resolution}, "
        f"teacher `{tier['teacher_architecture']}` trained once for {tier['teacher_epochs']} "
        f"epochs, students `{tier['student_architecture']}` for {tier['student_epochs']} "
        f"epochs; SGD lr {tier['learning_rate']} momentum {tier['momentum']} weight decay "
        f"{tier['weight_decay']}, batch {tier['batch_size']}, {tier['schedule']} schedule; "
        f"augmentation pad-{tier['pad']} crop + flip, {teacher_signal}; each method at its "
        "CIFAR-100 preset (hf_kd.losses.preset), "
        "warm-ups scaled by epochs/240 (DKD, RLD, MCLD's category term). Top-1 on the full "
        "10,000-image test set at the end of the fixed schedule (no validation split, no "
        f"early stopping). Device: {summary['device']}; wall times are only comparable with "
        "each other.",
        "",
    ]
    if teacher is not None:
        lines.append(
            f"Teacher `{teacher['architecture']}` ({teacher['parameters']:,} parameters): "
            f"**{teacher['top1']:.2f}%** top-1, trained in {teacher['wall_time_s'] / 60:.1f} min."
        )
        lines.append("")
    lines += [methods_table(summary), "", f"![accuracy per method]({chart_name})", ""]
    if summary["mcld_ablations"]:
        lines += [
            "MCLD ablations (each changes one option of the defaults of spec 6.2). The delta "
            "is paired: ablation minus default MCLD at the same seed, mean ± std over seeds, "
            "then each seed's difference:",
            "",
            "| ablation | options | top-1 % | delta vs default | per-seed deltas |",
            "|---|---|---|---|---|",
        ]
        for name, row in summary["mcld_ablations"].items():
            options = ABLATION_OVERRIDES[name]
            lines.append(
                f"| {name} | `{json.dumps(options)}` | {_accuracy_cell(row)} | "
                f"{_delta_cells(row['delta_vs_default'])} |"
            )
        lines.append("")
    pending = summary["pending"]
    lines.append(
        f"Pending runs ({len(pending)}): {', '.join(pending)}." if pending else "All runs finished."
    )
    lines += [
        "",
        "Reproduce (resumes; every finished run is a record in "
        "`benchmarks/results/accuracy_runs/`): `python benchmarks/accuracy.py`; aggregate "
        "with `python benchmarks/accuracy.py --report`.",
        "",
    ]
    return "\n".join(lines)


def ablation_deltas(row: dict, baseline: dict | None) -> list[float] | None:
    """Per-seed differences, ablation top-1 minus the default MCLD's at the same seed (in the
    ablation's seed order); ``None`` when the default has not run at every one of them."""
    if baseline is None or not set(row["seeds"]) <= set(baseline["seeds"]):
        return None
    return [
        accuracy - baseline["top1"][baseline["seeds"].index(seed)]
        for seed, accuracy in zip(row["seeds"], row["top1"], strict=True)
    ]


def _delta_cells(deltas: list[float] | None) -> str:
    """``mean ± std | d0, d1, ...`` of paired deltas (two table cells)."""
    if deltas is None:
        return "n/a | n/a"
    spread = f" ± {statistics.stdev(deltas):.2f}" if len(deltas) > 1 else ""
    each = ", ".join(f"{delta:+.2f}" for delta in deltas)
    return f"{statistics.mean(deltas):+.2f}{spread} | {each}"


def compare_records(records: dict[str, dict], other: dict[str, dict]) -> str:
    """A Markdown table of the runs both folders hold: top-1 in each and the difference,
    with each folder's library versions (reproducibility across environments)."""
    lines = [
        "| run | top-1 % here | top-1 % other | difference |",
        "|---|---|---|---|",
    ]
    differences = []
    for run in sorted(set(records) & set(other)):
        here, there = records[run]["top1"], other[run]["top1"]
        differences.append(here - there)
        lines.append(f"| {run} | {here:.2f} | {there:.2f} | {here - there:+.2f} |")
    if differences:
        absolute = [abs(difference) for difference in differences]
        lines += [
            "",
            f"{len(differences)} runs in both; identical: "
            f"{sum(difference == 0 for difference in differences)}; mean |difference| "
            f"{statistics.mean(absolute):.2f}, largest {max(absolute):.2f}.",
        ]
    for name, folder in (("here", records), ("other", other)):
        versions = sorted({json.dumps(r["versions"]) for r in folder.values() if "versions" in r})
        lines.append(f"Versions {name}: {', '.join(versions) or 'not recorded'}.")
    return "\n".join(lines)


def methods_table(summary: dict) -> str:
    """The per-method table (Markdown), shared by RESULTS.md and the README."""
    lines = [
        "| method | top-1 % (mean ± std over seeds) | seeds | wall time per run (s) |",
        "|---|---|---|---|",
    ]
    if summary["teacher"] is not None:
        teacher = summary["teacher"]
        lines.append(
            f"| teacher `{teacher['architecture']}` | {teacher['top1']:.2f} | [0] | "
            f"{teacher['wall_time_s']:.0f} |"
        )
    for name, row in summary["methods"].items():
        lines.append(
            f"| {name} | {_accuracy_cell(row)} | {row['seeds']} | {row['wall_time_s_mean']:.0f} |"
        )
    return "\n".join(lines)


def update_readme(readme: Path, summary: dict, chart: str) -> None:
    """Replace the table between the README's accuracy markers (if it has them)."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start == -1 or end < start:
        logger.warning("%s has no %s ... %s markers: not updated", readme, README_START, README_END)
        return
    pending = summary["pending"]
    status = f"{len(pending)} planned runs still pending." if pending else "All runs finished."
    block = "\n".join(
        [
            README_START,
            "",
            methods_table(summary),
            "",
            f"![accuracy per method]({chart})",
            "",
            status,
            "",
        ]
    )
    write_atomically(readme, text[:start] + block + text[end:])


def plot_methods(summary: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["methods"])
    means = [summary["methods"][name]["top1_mean"] for name in names]
    stds = [summary["methods"][name]["top1_std"] or 0.0 for name in names]
    figure, axes = plt.subplots(figsize=(7, 3.5))
    bars = axes.bar(names, means, yerr=stds, capsize=4, color="tab:blue")
    # the axis does not start at 0: print each mean on its bar
    axes.bar_label(bars, labels=[f"{mean:.1f}" for mean in means], label_type="center", color="w")
    if summary["teacher"] is not None:
        axes.axhline(summary["teacher"]["top1"], color="tab:red", linestyle="--", label="teacher")
        axes.legend()
    axes.set_ylabel("top-1 % (CIFAR-100 test)")
    axes.set_title(f"CIFAR-100, {title} (mean ± std over seeds)")
    highest = [*means, summary["teacher"]["top1"]] if summary["teacher"] else means
    axes.set_ylim(max(0.0, min(means) - 5), max(highest) + 3)
    figure.tight_layout()
    replace_atomically(path, lambda partial: figure.savefig(partial, dpi=120))
    plt.close(figure)


def write_report(results_dir: Path, tier: TierConfig, readme: Path | None = None) -> dict:
    """Aggregate the records into accuracy.json, the chart and the accuracy section of the
    RESULTS.md next to ``results_dir``."""
    summary = summarise(load_records(results_dir / f"{tier.stem}_runs"), tier)
    results_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(results_dir / f"{tier.stem}.json", json.dumps(summary, indent=2) + "\n")
    chart = results_dir / f"{tier.stem}.png"
    results_md = results_dir.parent / "RESULTS.md"
    if summary["methods"]:
        plot_methods(summary, tier.title, chart)
    section = markdown_report(summary, tier, f"{results_dir.name}/{chart.name}")
    existing = results_md.read_text() if results_md.exists() else "# Benchmark results\n\n"
    start = existing.find(tier.report_section)
    if start == -1:
        updated = existing.rstrip("\n") + "\n\n" + section
    else:
        end = existing.find("\n## ", start + len(tier.report_section))
        updated = existing[:start] + section + ("\n" + existing[end + 1 :] if end != -1 else "")
    write_atomically(results_md, updated)
    if readme is not None:
        update_readme(readme, summary, os.path.relpath(chart, readme.parent))
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tier", choices=sorted(TIERS), default="cpu")
    parser.add_argument("--full", action="store_true", help="same as --tier full")
    parser.add_argument("--dataset_name", default=DEFAULT_DATASET, help="path or Hub id")
    parser.add_argument("--work_dir", default=str(REPO_ROOT / "outputs" / "accuracy"))
    parser.add_argument(
        "--data_cache_dir",
        default=str(DATA_CACHE_DIR),
        help="where the decoded, downsampled uint8 images are cached",
    )
    parser.add_argument(
        "--results_dir",
        default=str(RESULTS_DIR),
        help="records: <results_dir>/accuracy_runs; report: RESULTS.md next to <results_dir>",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="run only these students (the teacher is trained first whenever it is missing: "
        "'--only teacher' trains and caches it and runs no student)",
    )
    parser.add_argument("--report", action="store_true", help="only aggregate the records")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    parser.add_argument("--teacher_epochs", type=float, default=None)
    parser.add_argument("--student_epochs", type=float, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--compare_with",
        default=None,
        help="a folder of records of the same runs made elsewhere (another machine or torch): "
        "print the per-run top-1 differences",
    )
    parser.add_argument(
        "--ablation_seeds",
        type=int,
        nargs="+",
        default=(),
        help="also run the default MCLD and its ablations (those named by --only) at these "
        "extra seeds",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    tier = TIERS["full" if args.full else args.tier]
    overrides = {
        "teacher_epochs": args.teacher_epochs,
        "student_epochs": args.student_epochs,
        "seeds": tuple(args.seeds) if args.seeds else None,
        "torch_threads": args.threads,
    }
    tier = replace(tier, **{key: value for key, value in overrides.items() if value is not None})
    torch.set_num_threads(tier.torch_threads)
    results_dir = Path(args.results_dir)
    # Only the default CPU run is shown in the README; other tiers and test runs are not.
    is_default = results_dir.resolve() == RESULTS_DIR and tier.name == "cpu" and not args.limit
    readme = REPO_ROOT / "README.md" if is_default else None
    if not args.report:
        work_dir = Path(args.work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        run_benchmark(
            tier,
            args.dataset_name,
            work_dir,
            results_dir,
            args.limit,
            args.only,
            readme,
            ablation_seeds=args.ablation_seeds,
            data_cache_dir=Path(args.data_cache_dir),
        )
    write_report(results_dir, tier, readme)
    if args.compare_with:
        runs_dir = results_dir / f"{tier.stem}_runs"
        print(compare_records(load_records(runs_dir), load_records(Path(args.compare_with))))


if __name__ == "__main__":
    main()
