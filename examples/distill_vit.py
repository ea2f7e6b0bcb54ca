"""Distil a teacher into a small ViT student with hf-kd.

    accelerate launch examples/distill_vit.py                      # the offline default
    accelerate launch examples/distill_vit.py --help               # every option

With no arguments the whole story runs offline on ``digits`` (scikit-learn's real 8x8
handwritten digits, upscaled to 32x32 RGB): a small CNN teacher (timm ``resnet10t``) is
trained first and saved under ``<output_dir>/teacher`` (reused by the next run), then a
small timm ViT student is distilled from it with MCLD, evaluated on the test split and
saved to ``--output_dir`` (default ``outputs/distill_vit``): ``config.json`` and
``model.safetensors`` (loadable with transformers and with timm), its preprocessing, a model
card ``README.md`` whose model-index holds the test accuracy, ``training_curves.png``, and
``all_results.json`` with ``eval_accuracy`` and the teacher's ``teacher_eval_accuracy``.
``--push_to_hub --hub_model_id <user>/<repo>`` (token: ``--hub_token`` or ``hf auth login``)
publishes the same student and card to the Hub.

The real-world recipe (needs the network):

    accelerate launch examples/distill_vit.py \\
        --dataset_name uoft-cs/cifar100 --label_column fine_label \\
        --teacher_model_name_or_path <a CIFAR-100 classifier on the Hub> \\
        --student_model_name_or_path vit_tiny_patch16_224 --student_pretrained \\
        --distillation_preset cifar100 --num_train_epochs 100
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import transformers
from datasets import DatasetDict, IterableDataset
from transformers import HfArgumentParser, PreTrainedModel, TrainingArguments

from hf_kd.arguments import DistillationArguments
from hf_kd.classifier_trainer import ClassifierTrainer
from hf_kd.data import (
    DATA_PATHS,
    ImageClassificationData,
    PreparedSplit,
    load_image_dataset,
    prepare_image_split,
)
from hf_kd.data.loading import IMAGE_COLUMN, LABEL_COLUMN
from hf_kd.data.pipeline import DEFAULT_MEMORY_BUDGET_MB
from hf_kd.data.streaming import (
    label_names_of,
    load_streaming_split,
    materialise,
    prepare_streaming_split,
)
from hf_kd.hub import save_student
from hf_kd.metrics import compute_accuracy_metrics
from hf_kd.models import (
    image_processor_for,
    load_classifier,
    load_image_processor,
    preprocessing_for,
)
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.trainer import DistillationTrainer

logger = logging.getLogger(__name__)

# Defaults of the offline story; any of them can be overridden on the command line.
DEFAULT_ARGUMENTS = [
    "--output_dir", "outputs/distill_vit",
    "--num_train_epochs", "20",
    "--per_device_train_batch_size", "64",
    "--per_device_eval_batch_size", "256",
    "--learning_rate", "3e-3",
    "--weight_decay", "0.05",
    "--warmup_steps", "0.1",
    "--lr_scheduler_type", "cosine",
    "--eval_strategy", "epoch",
    "--save_strategy", "no",
    "--logging_steps", "10",
    "--report_to", "none",
    "--seed", "42",
]  # fmt: skip
TEACHER_DIRECTORY = "teacher"
TEACHER_RESULTS_FILE = "teacher_results.json"


@dataclass
class ModelArguments:
    """The student, and the teacher (given, or trained here first)."""

    student_model_name_or_path: str = field(
        default="vit_tiny_patch16_224",
        metadata={"help": "Student: a timm name, a transformers model type, Hub id or folder."},
    )
    student_model_kwargs: str = field(
        default='{"img_size": 32, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}',
        metadata={
            "help": "JSON dict of architecture arguments for the student (timm create_model "
            "kwargs or transformers config attributes). The default is a 4-block ViT for "
            "32x32 inputs (8x8 patches); pass '{}' for a checkpoint's own architecture."
        },
    )
    student_pretrained: bool = field(
        default=False,
        metadata={"help": "Load the student's pretrained weights (needs them on the Hub)."},
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A trained teacher (Hub id or folder) with the dataset's classes. When "
            "left out, a teacher is trained on the dataset first (--teacher_architecture) "
            "and saved under <output_dir>/teacher, where later runs reuse it."
        },
    )
    teacher_architecture: str = field(
        default="resnet10t",
        metadata={"help": "timm architecture of the teacher trained when none is given."},
    )
    teacher_num_train_epochs: float = field(
        default=5.0, metadata={"help": "Epochs of the teacher trained when none is given."}
    )
    teacher_learning_rate: float = field(
        default=2e-3, metadata={"help": "Learning rate of the teacher trained here."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run code shipped with Hub checkpoints. Only for repos you trust."},
    )


@dataclass
class DataArguments:
    """The dataset and its preprocessing."""

    dataset_name: str = field(
        default="digits",
        metadata={
            "help": "'digits' (embedded, offline), a Hub dataset id, a local dataset folder, "
            "or 'imagefolder' with --data_dir."
        },
    )
    data_dir: str | None = field(default=None, metadata={"help": "data_dir for imagefolder."})
    image_column: str | None = field(
        default=None, metadata={"help": "Image column (default: detected)."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "Label column (default: detected)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default=None,
        metadata={"help": "Validation split (default: one of the source, else held out)."},
    )
    validation_fraction: float = field(
        default=0.1, metadata={"help": "Share of the train split held out for validation."}
    )
    augment: str = field(
        default="crop",
        metadata={
            "help": "Training augmentation: 'default' (pad-crop + horizontal flip), 'crop' "
            "(pad-crop only: right for digits, where a flip changes the class) or 'none'."
        },
    )
    data_path: str = field(
        default="auto",
        metadata={
            "help": "How images reach the models: 'decoded' (decode every image once to uint8, "
            "cached on disk; augment, resize and normalise per batch on the training device), "
            "'pil' (decode and augment every image with PIL each epoch) or 'auto' ('decoded' "
            "when the training split fits in --decode_memory_budget_mb, else 'pil').",
            "choices": list(DATA_PATHS),
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the training split instead of downloading it (a datasets "
            "IterableDataset split across ranks by split_dataset_by_node; PIL transforms). "
            "Needs --max_steps, --eval_split (its first --max_eval_samples rows are streamed "
            "once into memory for evaluation) and --teacher_model_name_or_path. Resume replays "
            "the stream and skips the batches already trained on (hf_kd.data.streaming)."
        },
    )
    shuffle_buffer: int = field(
        default=1000, metadata={"help": "Examples shuffled at a time when streaming."}
    )
    decode_memory_budget_mb: float = field(
        default=DEFAULT_MEMORY_BUDGET_MB,
        metadata={"help": "Memory the decoded training split may take for 'auto' to decode it."},
    )
    decoded_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where decoded splits are cached (default: <HF_DATASETS_CACHE>/hf_kd_decoded)."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Truncate the training set (quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Truncate the validation and test sets (quick runs)."}
    )


def parse_arguments(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, DistillationArguments]:
    """Parse ``DEFAULT_ARGUMENTS`` followed by ``argv``: later flags win."""
    parser = HfArgumentParser((ModelArguments, DataArguments, DistillationArguments))
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        parser.parse_args_into_dataclasses(["--help"])
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(
        [*DEFAULT_ARGUMENTS, *argv]
    )
    return model_args, data_args, training_args


def truncated(split: Any, limit: int | None) -> Any:
    return split if limit is None or limit >= len(split) else split.select(range(limit))


def load_data(
    data_args: DataArguments, training_args: DistillationArguments
) -> tuple[ImageClassificationData, IterableDataset | None]:
    """The dataset's map-style splits, and the training stream when ``--streaming``: then
    the splits hold only the validation rows, streamed once into memory."""
    if not data_args.streaming:
        data = load_image_dataset(
            data_args.dataset_name,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            train_split=data_args.train_split,
            eval_split=data_args.eval_split,
            validation_fraction=data_args.validation_fraction,
            seed=training_args.seed,
            data_dir=data_args.data_dir,
        )
        return data, None
    if data_args.eval_split is None:
        raise ValueError("--streaming needs --eval_split: the split to evaluate on")
    columns = {
        "image_column": data_args.image_column or IMAGE_COLUMN,
        "label_column": data_args.label_column or LABEL_COLUMN,
        "data_dir": data_args.data_dir,
    }
    stream = load_streaming_split(data_args.dataset_name, data_args.train_split, **columns)
    validation = materialise(
        load_streaming_split(data_args.dataset_name, data_args.eval_split, **columns),
        data_args.max_eval_samples,
    )
    data = ImageClassificationData(DatasetDict(validation=validation), label_names_of(stream))
    return data, stream


def prepare_splits(
    data: ImageClassificationData,
    data_args: DataArguments,
    student: ImagePreprocessing,
    teacher: ImagePreprocessing | None = None,
    *,
    streamed_train: PreparedSplit | None = None,
) -> tuple[PreparedSplit, PreparedSplit, PreparedSplit | None]:
    """Train, validation and (when present) test splits on one data path: the training
    split's (``--data_path``; ``auto`` decides on the training split). With
    ``streamed_train`` (this rank's share of a stream) the evaluation splits take the PIL
    path, whose collator is the stream's."""
    common = {
        "preprocessing": student,
        "augment": data_args.augment,
        "memory_budget_mb": data_args.decode_memory_budget_mb,
        "cache_dir": data_args.decoded_cache_dir,
    }
    train = streamed_train or prepare_image_split(
        truncated(data.splits["train"], data_args.max_train_samples),
        train=True,
        teacher_preprocessing=teacher,
        data_path=data_args.data_path,
        **common,
    )
    logger.info("data path: %s", train.data_path)
    evaluation_path = "pil" if train.data_path == "streaming" else train.data_path
    evaluation = {"train": False, "data_path": evaluation_path, **common}
    validation = prepare_image_split(
        truncated(data.splits["validation"], data_args.max_eval_samples), **evaluation
    )
    test = data.splits.get("test")
    return (
        train,
        validation,
        None
        if test is None
        else prepare_image_split(truncated(test, data_args.max_eval_samples), **evaluation),
    )


def train_teacher(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: DistillationArguments,
    data: ImageClassificationData,
    preprocessing: ImagePreprocessing,
    teacher_dir: str,
) -> tuple[PreTrainedModel, float]:
    """Train a teacher with plain cross-entropy on the student's preprocessing, save it to
    ``teacher_dir`` with its accuracy; return both."""
    teacher = load_classifier(
        model_args.teacher_architecture, id2label=data.id2label, pretrained=False
    )
    train, validation, test = prepare_splits(data, data_args, preprocessing)
    teacher_args = TrainingArguments(
        output_dir=teacher_dir,
        num_train_epochs=model_args.teacher_num_train_epochs,
        learning_rate=model_args.teacher_learning_rate,
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        per_device_eval_batch_size=training_args.per_device_eval_batch_size,
        weight_decay=training_args.weight_decay,
        warmup_steps=0.1,
        lr_scheduler_type="cosine",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=training_args.logging_steps,
        disable_tqdm=training_args.disable_tqdm,
        report_to="none",
        seed=training_args.seed,
        bf16=training_args.bf16,
        fp16=training_args.fp16,
        use_cpu=training_args.use_cpu,
        remove_unused_columns=False,
        dataloader_num_workers=training_args.dataloader_num_workers,
        # the distillation run's device-fitted defaults (no pinning without an accelerator,
        # no per-step search for unused parameters under DDP)
        dataloader_pin_memory=training_args.dataloader_pin_memory,
        ddp_find_unused_parameters=training_args.ddp_find_unused_parameters,
    )
    trainer = ClassifierTrainer(
        model=teacher,
        args=teacher_args,
        train_dataset=train.dataset,
        data_collator=train.collator,
        processing_class=image_processor_for(teacher, preprocessing),
        compute_metrics=compute_accuracy_metrics,
        preprocessing=preprocessing,
    )
    trainer.train()
    accuracy = trainer.predict((test or validation).dataset).metrics["test_accuracy"]
    if trainer.is_world_process_zero():
        # the layout timm ("local-dir:") and transformers both load, as for the student
        save_student(teacher, teacher_dir, image_processor=preprocessing)
        with open(os.path.join(teacher_dir, TEACHER_RESULTS_FILE), "w") as handle:
            json.dump({"eval_accuracy": accuracy}, handle)
    trainer.accelerator.wait_for_everyone()
    return teacher, accuracy


def load_or_train_teacher(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: DistillationArguments,
    data: ImageClassificationData,
    student_preprocessing: ImagePreprocessing,
) -> tuple[PreTrainedModel, ImagePreprocessing, float | None]:
    """The teacher, its preprocessing and, when known, its test accuracy."""
    if model_args.teacher_model_name_or_path is not None:
        name = model_args.teacher_model_name_or_path
        teacher = load_classifier(name, trust_remote_code=model_args.trust_remote_code)
        processor = load_image_processor(name, trust_remote_code=model_args.trust_remote_code)
        return teacher, preprocessing_for(teacher, processor), None
    teacher_dir = os.path.join(training_args.output_dir, TEACHER_DIRECTORY)
    results_file = os.path.join(teacher_dir, TEACHER_RESULTS_FILE)
    if os.path.isfile(results_file):
        logger.info("reusing the teacher trained earlier in %s", teacher_dir)
        teacher = load_classifier(teacher_dir)
        with open(results_file) as handle:
            accuracy = json.load(handle)["eval_accuracy"]
    else:
        logger.info(
            "no teacher given: training a %s teacher first", model_args.teacher_architecture
        )
        teacher, accuracy = train_teacher(
            model_args, data_args, training_args, data, student_preprocessing, teacher_dir
        )
    return teacher, preprocessing_for(teacher), accuracy


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the distillation job; return the metrics written to ``all_results.json``."""
    model_args, data_args, training_args = parse_arguments(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.should_log else logging.WARNING,
    )
    transformers.set_seed(training_args.seed)

    data, stream = load_data(data_args, training_args)
    if stream is not None and model_args.teacher_model_name_or_path is None:
        raise ValueError("--streaming needs a trained --teacher_model_name_or_path")
    student = load_classifier(
        model_args.student_model_name_or_path,
        id2label=data.id2label,
        pretrained=model_args.student_pretrained,
        model_kwargs=json.loads(model_args.student_model_kwargs),
        trust_remote_code=model_args.trust_remote_code,
    )
    student_preprocessing = preprocessing_for(student)
    teacher, teacher_preprocessing, teacher_accuracy = load_or_train_teacher(
        model_args, data_args, training_args, data, student_preprocessing
    )
    streamed_train = (
        None
        if stream is None
        else prepare_streaming_split(
            stream,
            preprocessing=student_preprocessing,
            teacher_preprocessing=teacher_preprocessing,
            augment=data_args.augment,
            rank=training_args.process_index,
            world_size=training_args.world_size,
            seed=training_args.seed,
            shuffle_buffer=data_args.shuffle_buffer,
        )
    )
    train, validation, test = prepare_splits(
        data,
        data_args,
        student_preprocessing,
        teacher_preprocessing,
        streamed_train=streamed_train,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=training_args,
        train_dataset=train.dataset,
        eval_dataset=validation.dataset,
        data_collator=train.collator,
        processing_class=image_processor_for(student, student_preprocessing),
        student_preprocessing=student_preprocessing,
        teacher_preprocessing=teacher_preprocessing,
        teacher_name=model_args.teacher_model_name_or_path or model_args.teacher_architecture,
        student_name=model_args.student_model_name_or_path,
        dataset_name=data_args.dataset_name,
        # the card reports the last evaluation: the test split's, below
        eval_split_name="test" if test is not None else "validation",
        teacher_eval_accuracy=teacher_accuracy,
        split_sizes={
            name: len(split.dataset)
            for name, split in (("train", train), ("validation", validation), ("test", test))
            # a streamed training split has no length
            if split is not None and hasattr(split.dataset, "__len__")
        },
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = dict(train_result.metrics)
    metrics.update(trainer.evaluate((test or validation).dataset))
    if teacher_accuracy is not None:
        metrics["teacher_eval_accuracy"] = teacher_accuracy
    trainer.save_metrics("all", metrics)
    trainer.save_state()
    if training_args.push_to_hub:
        trainer.push_to_hub()  # saves the student and its card, then uploads them
    else:
        trainer.save_model()
    # ends the process group (if any) before exit: gloo's threads left running can abort it
    trainer.accelerator.end_training()
    return metrics


if __name__ == "__main__":
    main()
