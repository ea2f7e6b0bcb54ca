"""A 2-process streamed distillation run for ``tests/test_data_streaming.py``.

Run as ``accelerate launch --multi_gpu --num_processes 2 tests/scripts/stream_ranks.py
--use_cpu --output_dir DIR --data_dir PARQUET_FOLDER --result_file FILE``. Every rank
asserts a 2-process group, trains on its share of the stream (``split_dataset_by_node``)
and writes the example ids of its batches to ``FILE.rank<r>.json``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for distill_helpers

from distill_helpers import ExampleRecordingTrainer, tiny_vit

from hf_kd.arguments import DistillationArguments
from hf_kd.data.streaming import label_names_of, load_streaming_split, prepare_streaming_split
from hf_kd.preprocessing import ImagePreprocessing


@dataclass
class ScriptArguments:
    data_dir: str = field(metadata={"help": "The parquet folder to stream."})
    result_file: str = field(metadata={"help": "Each rank writes RESULT_FILE.rank<r>.json."})


def main() -> None:
    torch.set_num_threads(1)
    script_args, args = HfArgumentParser(
        (ScriptArguments, DistillationArguments)
    ).parse_args_into_dataclasses()
    assert args.world_size == 2, f"expected 2 processes, got {args.world_size}"
    stream = load_streaming_split(script_args.data_dir, id_column="example_id")
    preprocessing = ImagePreprocessing((16, 16), interpolation="bilinear")
    train = prepare_streaming_split(
        stream,
        preprocessing=preprocessing,
        rank=args.process_index,
        world_size=args.world_size,
        seed=args.seed,
    )
    names = dict(enumerate(label_names_of(stream)))
    trainer = ExampleRecordingTrainer(
        model=tiny_vit(num_labels=len(names), id2label=names, seed=1),
        teacher_model=tiny_vit(num_labels=len(names), id2label=names, seed=2),
        args=args,
        train_dataset=train.dataset,
        data_collator=train.collator,
        student_preprocessing=preprocessing,
    )
    trainer.train()
    result = Path(f"{script_args.result_file}.rank{args.process_index}.json")
    result.write_text(json.dumps({"example_ids": trainer.seen_example_ids}))
    # gloo's threads must stop before the interpreter exits, or exit can abort the process
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
