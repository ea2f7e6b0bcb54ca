"""Streaming: the standard layout of a streamed local parquet dataset, per-rank shares that
are disjoint and cover the split (in process, and in a real 2-process run), and resume
landing on the examples an uninterrupted run would have seen."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distill_helpers import ExampleRecordingTrainer, make_args, tiny_vit, write_streaming_parquet
from test_distributed import free_port

from hf_kd.data.streaming import (
    StreamingImages,
    label_names_of,
    load_streaming_split,
    materialise,
    prepare_streaming_split,
)
from hf_kd.preprocessing import ImagePreprocessing

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "tests" / "scripts" / "stream_ranks.py"
PREPROCESSING = ImagePreprocessing((16, 16), interpolation="bilinear")
ROWS_PER_FILE = 12


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_streaming_parquet(tmp_path_factory.mktemp("four"), 4, ROWS_PER_FILE)


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_streaming_parquet(tmp_path_factory.mktemp("three"), 3, ROWS_PER_FILE)


def test_a_stream_comes_in_the_standard_layout(four_shards) -> None:
    stream = load_streaming_split(str(four_shards), id_column="example_id")
    assert label_names_of(stream) == ("class_0", "class_1", "class_2")
    example = next(iter(stream))
    assert sorted(example) == ["example_id", "image", "label"]
    assert isinstance(example["image"]["bytes"], bytes)  # decoded by the transforms
    evaluation = materialise(stream, 5)
    assert len(evaluation) == 5 and evaluation["row_index"] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"no column\(s\) \['idx'\]"):
        load_streaming_split(str(four_shards), id_column="idx")


@pytest.mark.parametrize("shards", ["four_shards", "three_shards"])
def test_each_rank_streams_its_own_examples_and_together_the_split(shards, request) -> None:
    """Four shards go to two ranks whole; three do not divide, so ranks take every other
    example: in both cases the shares are disjoint and cover the split."""
    folder = request.getfixturevalue(shards)
    stream = load_streaming_split(str(folder), id_column="example_id")
    shares = []
    for rank in range(2):
        prepared = prepare_streaming_split(
            stream, preprocessing=PREPROCESSING, rank=rank, world_size=2, seed=3
        )
        assert isinstance(prepared.dataset, StreamingImages)
        items = list(prepared.dataset)
        assert items[0]["pixel_values"].shape == (3, 16, 16)
        shares.append([item["example_id"] for item in items])
    total = len(list(stream))
    assert set(shares[0]).isdisjoint(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(total))


def _train(folder: Path, output_dir: Path, **overrides) -> ExampleRecordingTrainer:
    stream = load_streaming_split(str(folder), id_column="example_id")
    train = prepare_streaming_split(stream, preprocessing=PREPROCESSING, seed=5, shuffle_buffer=16)
    names = dict(enumerate(label_names_of(stream)))
    trainer = ExampleRecordingTrainer(
        model=tiny_vit(num_labels=3, id2label=names, seed=1),
        teacher_model=tiny_vit(num_labels=3, id2label=names, seed=2),
        args=make_args(output_dir, **overrides),
        train_dataset=train.dataset,
        data_collator=train.collator,
        student_preprocessing=PREPROCESSING,
    )
    return trainer


def test_resume_lands_on_the_examples_of_an_uninterrupted_run(four_shards, tmp_path) -> None:
    # 48 examples, batches of 8: a pass is 6 steps, so 9 steps cross into a reshuffled pass 2
    common = {"max_steps": 9, "per_device_train_batch_size": 8}
    whole = _train(four_shards, tmp_path / "whole", save_strategy="steps", save_steps=4, **common)
    whole.train()
    assert len(whole.seen_example_ids) == 9
    first_pass = list(itertools.chain(*whole.seen_example_ids[:6]))
    assert sorted(first_pass) == list(range(48))  # a pass sees every example once
    assert whole.seen_example_ids[6:] != whole.seen_example_ids[:3]  # reshuffled per pass

    resumed = _train(four_shards, tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-4"))
    assert resumed.seen_example_ids[-5:] == whole.seen_example_ids[4:]
    assert resumed.state.global_step == 9


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_two_processes_stream_disjoint_shares_that_cover_the_split(four_shards, tmp_path) -> None:
    result_file = tmp_path / "result"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        str(SCRIPT),
        "--use_cpu", "--output_dir", str(tmp_path / "output"),
        "--data_dir", str(four_shards), "--result_file", str(result_file),
        "--distillation_method", "kd", "--per_device_train_batch_size", "8",
        "--max_steps", "3", "--save_strategy", "no", "--report_to", "none",
        "--disable_tqdm", "true", "--seed", "11",
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    shares = [
        list(
            itertools.chain(
                *json.loads(Path(f"{result_file}.rank{rank}.json").read_text())["example_ids"]
            )
        )
        for rank in range(2)
    ]
    assert len(shares[0]) == len(shares[1]) == 24  # 3 steps of 8 on each rank
    assert set(shares[0]).isdisjoint(shares[1])
    assert sorted(shares[0] + shares[1]) == list(range(4 * ROWS_PER_FILE))
