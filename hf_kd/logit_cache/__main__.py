"""Cache a teacher's logits over one split of a dataset, from the command line.

    python -m hf_kd.logit_cache --teacher_model_name_or_path <dir or Hub id> \\
        --dataset_name digits --split train --output_path outputs/teacher_logits/train

The dataset is loaded as ``hf_kd.data.load_image_dataset`` loads it for training (same
``--train_split``, ``--eval_split``, ``--validation_fraction`` and ``--data_seed``), so the
cache's rows are the training job's rows. ``--help`` lists every option.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import HfArgumentParser

from hf_kd.data.loading import load_image_dataset
from hf_kd.data.transforms import Augmentation
from hf_kd.logit_cache.building import cache_teacher_logits
from hf_kd.logit_cache.storage import StorageDtype, TeacherLogitCache
from hf_kd.models import load_classifier, load_image_processor, preprocessing_for

logger = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class CacheTeacherLogitsArguments:
    """Options of ``python -m hf_kd.logit_cache``."""

    teacher_model_name_or_path: str = field(
        metadata={"help": "The teacher: a local directory, a Hub id or a timm name."}
    )
    output_path: str = field(
        metadata={"help": "Directory to write the cache to (logits.parquet, metadata.json)."}
    )
    dataset_name: str = field(
        default="digits",
        metadata={
            "help": "Dataset: 'digits' (embedded, offline), 'imagefolder' (with --data_dir), a "
            "local folder or a Hub dataset id; as in the training script."
        },
    )
    split: Literal["train", "validation", "test"] = field(
        default="train",
        metadata={"help": "Which split, after loading, to cache (the training split: 'train')."},
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "data_dir of datasets.load_dataset (imagefolder)."}
    )
    image_column: str | None = field(
        default=None, metadata={"help": "Image column; unset: the first datasets.Image column."}
    )
    label_column: str | None = field(
        default=None,
        metadata={
            "help": "Label column; unset: the first ClassLabel (or label/labels/fine_label) column."
        },
    )
    train_split: str = field(
        default="train", metadata={"help": "The source split used as 'train'."}
    )
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "The source split used as 'validation'; unset: one named validation/valid/val, "
            "else a hold-out of train."
        },
    )
    validation_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of train held out as validation when the source has none."},
    )
    data_seed: int = field(default=42, metadata={"help": "Seed of that hold-out split."})
    batch_size: int = field(default=64, metadata={"help": "Images per teacher forward."})
    dtype: StorageDtype = field(
        default="float16", metadata={"help": "Storage dtype of the logits."}
    )
    top_k: int | None = field(
        default=None,
        metadata={
            "help": "Keep only the k largest logits per image (the rest share one fill value, "
            "the log-mean-exp of the dropped logits); default: keep all."
        },
    )
    augment: Augmentation = field(
        default="none",
        metadata={
            "help": "Augmentation of the cached views: 'none' (one plain view; train without "
            "augmentation), 'crop' (random shift) or 'default' (shift and flip), replayed "
            "identically for the student in training."
        },
    )
    num_views: int = field(
        default=1, metadata={"help": "Augmented views cached per image (1 with augment=none)."}
    )
    view_seed: int = field(default=0, metadata={"help": "Seed of the views' augmentations."})
    data_path: Literal["pil", "decoded"] = field(
        default="pil",
        metadata={
            "help": "The data path the student will train on, which makes the teacher's views "
            "too: 'pil' or 'decoded' (decode once, build views on the device). A cache is "
            "refused on the other path."
        },
    )
    autocast: Literal["none", "bfloat16", "float16"] = field(
        default="none", metadata={"help": "Run the teacher under autocast in this dtype."}
    )
    device: str | None = field(
        default=None,
        metadata={"help": "Device of the teacher; unset: cuda when available, else cpu."},
    )
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers decoding images."})
    overwrite: bool = field(
        default=False, metadata={"help": "Replace a cache already at --output_path."}
    )
    disable_tqdm: bool = field(
        default=False, metadata={"help": "Hide the progress bar over the cached views."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run code shipped with a Hub teacher; only for repositories you trust."},
    )


def main(argv: Sequence[str] | None = None) -> TeacherLogitCache:
    """Parse ``argv`` (default: ``sys.argv[1:]``), cache the logits, return the cache."""
    parser = HfArgumentParser(
        CacheTeacherLogitsArguments,
        prog="python -m hf_kd.logit_cache",
        description="Run a teacher once over a dataset split and cache its logits for "
        "distillation (hf_kd.cache_teacher_logits). Train with them through "
        "hf_kd.with_cached_teacher_logits: the trainer then skips the teacher.",
    )
    (args,) = parser.parse_args_into_dataclasses(args=list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = load_image_dataset(
        args.dataset_name,
        image_column=args.image_column,
        label_column=args.label_column,
        train_split=args.train_split,
        eval_split=args.eval_split,
        validation_fraction=args.validation_fraction,
        seed=args.data_seed,
        data_dir=args.data_dir,
    )
    if args.split not in data.splits:
        raise ValueError(f"no split {args.split!r}; available: {list(data.splits)}")
    teacher = load_classifier(
        args.teacher_model_name_or_path, trust_remote_code=args.trust_remote_code
    )
    preprocessing = preprocessing_for(
        teacher,
        load_image_processor(
            args.teacher_model_name_or_path, trust_remote_code=args.trust_remote_code
        ),
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher.to(device)
    logger.info(
        "teacher %s on %s, preprocessing %s", args.teacher_model_name_or_path, device, preprocessing
    )
    return cache_teacher_logits(
        teacher,
        data.splits[args.split],
        preprocessing=preprocessing,
        output_path=args.output_path,
        split_name=args.split,
        batch_size=args.batch_size,
        dtype=args.dtype,
        top_k=args.top_k,
        augment=args.augment,
        num_views=args.num_views,
        view_seed=args.view_seed,
        data_path=args.data_path,
        autocast_dtype=AUTOCAST_DTYPES[args.autocast],
        num_workers=args.num_workers,
        overwrite=args.overwrite,
        source={"teacher": args.teacher_model_name_or_path, "dataset": args.dataset_name},
        disable_tqdm=args.disable_tqdm,
    )


if __name__ == "__main__":
    main()
