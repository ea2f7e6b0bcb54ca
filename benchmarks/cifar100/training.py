"""Training: the teacher (plain cross-entropy, checkpointed and resumable), its logits on the
replayed views, and one student per (method, seed) with :class:`hf_kd.DistillationTrainer`
at the method's CIFAR-100 preset. With a ``keep_dir``, each finished model is kept as a
Hub-ready folder (:mod:`benchmarks.cifar100.keep`)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, TrainerCallback, TrainerState, TrainingArguments, set_seed

from benchmarks.cifar100.config import TEACHER_SAVE_STEPS, VIEW_SEED, StudentSpec, TierConfig
from benchmarks.cifar100.data import TensorData, preprocessing_of, test_accuracy
from benchmarks.cifar100.keep import card_dataset, keep_model
from hf_kd.arguments import DistillationArguments
from hf_kd.classifier_trainer import ClassifierTrainer
from hf_kd.data import DecodedImages, collate_decoded_batch
from hf_kd.logit_cache import (
    TeacherLogitCache,
    cache_teacher_logits,
    load_teacher_logit_cache,
    with_cached_teacher_logits,
)
from hf_kd.losses import preset
from hf_kd.metrics import compute_accuracy_metrics
from hf_kd.model_card import latest_eval_accuracies
from hf_kd.models import count_parameters, load_classifier
from hf_kd.trainer import DistillationTrainer

EVAL_BATCH_SIZE = 1000


def build_optimizer(
    model: torch.nn.Module, tier: TierConfig, epochs: float, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The tier's optimizer (SGD with momentum, or AdamW) with its schedule, stepped per
    optimizer step: cosine to 0 (``CosineAnnealingLR``), or x0.1 at each milestone epoch
    (``MultiStepLR``). torch's own classes, so that the model cards can state them."""
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
    if tier.schedule == "cosine":
        total_steps = max(1, math.ceil(epochs * steps_per_epoch))
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    milestones = [milestone * steps_per_epoch for milestone in tier.milestones]
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)


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


def evaluation_kwargs() -> dict:
    """Top-1 on the test split after every epoch: the kept models' curves and card."""
    return {"eval_strategy": "epoch", "per_device_eval_batch_size": EVAL_BATCH_SIZE}


def card_arguments(tier: TierConfig, data: TensorData) -> dict:
    """What the trainers' model cards say of the data: its name at the tier's size, the test
    split as the evaluated one, the images per split."""
    return {
        "dataset_name": card_dataset(tier),
        "eval_split_name": "test",
        "training_eval_split_name": "test",
        "split_sizes": {"train": len(data.train), "test": len(data.test)},
    }


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


def teacher_trainer(
    tier: TierConfig, data: TensorData, work_dir: Path, teacher: PreTrainedModel
) -> ClassifierTrainer:
    """The teacher's trainer: plain cross-entropy, checkpoints every ``TEACHER_SAVE_STEPS``
    steps in ``work_dir/teacher_run``, top-1 on the test split after every epoch (the card's
    curves)."""
    dataset = DecodedImages(data.train, train=True, augment="default")
    steps_per_epoch = math.ceil(len(dataset) / tier.batch_size)
    kwargs = common_training_kwargs(tier, tier.teacher_epochs, 0, work_dir / "teacher_run")
    kwargs.update(save_strategy="steps", save_steps=TEACHER_SAVE_STEPS, save_total_limit=1)
    kwargs.update(evaluation_kwargs())
    return ClassifierTrainer(
        model=teacher,
        args=TrainingArguments(**kwargs),
        train_dataset=dataset,
        eval_dataset=DecodedImages(data.test, train=False),
        compute_metrics=compute_accuracy_metrics,
        data_collator=collate_decoded_batch,
        preprocessing=preprocessing_of(tier),
        optimizers=build_optimizer(teacher, tier, tier.teacher_epochs, steps_per_epoch),
        **card_arguments(tier, data),
    )


def train_teacher(
    tier: TierConfig, data: TensorData, work_dir: Path, keep_dir: Path | None = None
) -> tuple[Path, dict]:
    """Train the teacher with plain cross-entropy and save it to ``work_dir/teacher``; with
    ``keep_dir``, also keep it there as a Hub-ready folder with its card. Resumes from the
    last checkpoint."""
    set_seed(0)
    teacher = load_classifier(
        tier.teacher_architecture,
        id2label=dict(enumerate(data.label_names)),
        pretrained=False,
    )
    trainer = teacher_trainer(tier, data, work_dir, teacher)
    wall_time = WallTimeAtCheckpoints(work_dir / "teacher_wall_time.json")
    trainer.add_callback(wall_time)
    resume = any(Path(trainer.args.output_dir).glob("checkpoint-*"))
    if not resume:
        wall_time.before = 0.0
    trainer.train(resume_from_checkpoint=resume or None)
    trainer.save_state()  # the whole log history (the card's curves) in trainer_state.json
    teacher_dir = work_dir / "teacher"
    teacher.save_pretrained(teacher_dir)
    if keep_dir is not None:
        keep_model(trainer, keep_dir)
    record = {
        "run": "teacher",
        "architecture": tier.teacher_architecture,
        "parameters": count_parameters(teacher),
        # evaluated on the test split at the end of its last epoch
        "top1": 100 * latest_eval_accuracies(trainer.state.log_history)[0],
        "wall_time_s": wall_time.total(),
        "epochs": tier.teacher_epochs,
    }
    return teacher_dir, record


def keep_trained_teacher(
    tier: TierConfig, data: TensorData, work_dir: Path, keep_dir: Path
) -> None:
    """Keep a teacher that an earlier run trained but did not keep: the weights of
    ``work_dir/teacher`` and the log history of its finished run (``trainer_state.json``),
    without training again."""
    state_file = work_dir / "teacher_run" / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(
            f"{state_file} is missing: the teacher's run did not save its state; delete "
            f"{work_dir / 'teacher'} and its record to train it again"
        )
    teacher = load_classifier(str(work_dir / "teacher"))
    # trained from random initialisation by the teacher stage; the folder it was reloaded
    # from is not an initialisation the card should name
    teacher.config._name_or_path = ""
    trainer = teacher_trainer(tier, data, work_dir, teacher)
    trainer.state = TrainerState.load_from_json(str(state_file))
    keep_model(trainer, keep_dir)


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
    spec: StudentSpec, tier: TierConfig, seed: int, output_dir: Path, **training: Any
) -> DistillationArguments:
    """The hf-kd arguments of one student: the method's CIFAR-100 preset, warm-ups scaled;
    ``training`` overrides the common training arguments (e.g. evaluation)."""
    common = {**common_training_kwargs(tier, tier.student_epochs, seed, output_dir), **training}
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
    keep_dir: Path | None = None,
    teacher_name: str | None = None,
    teacher_top1: float | None = None,
) -> dict:
    """Distil one student; its record.

    ``teacher_logits``: the cache of replayed views (:func:`cached_teacher_logits`); without
    it, fresh augmentation every epoch and the live ``teacher`` (given with a cache, the
    teacher only names and sizes itself in the card and times the speed-up). ``extra_metrics
    (student, data)``: more entries for the record, measured on the trained student.
    ``keep_dir``: evaluate on the test split after every epoch and keep the student there,
    a Hub-ready folder whose card names the teacher ``teacher_name`` (with its test top-1
    ``teacher_top1``, in %).
    """
    output_dir = work_dir / f"student_{spec.name}"
    evaluation = evaluation_kwargs() if keep_dir is not None else {}
    args = distillation_arguments(spec, tier, seed, output_dir, **evaluation)
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
        teacher_model=teacher,
        args=args,
        train_dataset=dataset,
        eval_dataset=DecodedImages(data.test, train=False) if keep_dir is not None else None,
        data_collator=collate_decoded_batch,
        optimizers=build_optimizer(student, tier, tier.student_epochs, steps_per_epoch),
        student_preprocessing=preprocessing_of(tier),
        teacher_name=teacher_name,
        teacher_eval_accuracy=teacher_top1 / 100 if teacher_top1 is not None else None,
        **card_arguments(tier, data),
    )
    trainer.train()
    wall = time.perf_counter() - started
    if keep_dir is not None:
        keep_model(trainer, keep_dir)
        # the test split was just evaluated at the end of the last epoch: no second pass
        top1 = 100 * latest_eval_accuracies(trainer.state.log_history)[0]
    else:
        top1 = test_accuracy(student, data, tier)
    objective = trainer.objective
    record = {
        "run": f"{spec.name}_seed{seed}",
        "name": spec.name,
        "method": spec.method,
        "seed": seed,
        "architecture": tier.student_architecture,
        "parameters": count_parameters(student),
        "top1": top1,
        "wall_time_s": wall,
        "epochs": tier.student_epochs,
        "model_dir": str(keep_dir) if keep_dir is not None else None,
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
