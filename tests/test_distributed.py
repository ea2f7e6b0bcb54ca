"""A real 2-process data-parallel run on CPU through ``accelerate launch``.

``--multi_gpu --num_processes 2`` starts two processes through torch.distributed; the
script's ``--use_cpu`` (a TrainingArguments flag) keeps them on the CPU with gloo. Note that
``accelerate launch --cpu --num_processes 2`` would silently run a single process, which is
why the script asserts a world size of 2 from inside the run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "tests" / "scripts" / "distill_ddp.py"
EVALUATE_SCRIPT = REPO_ROOT / "tests" / "scripts" / "evaluate_ddp.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two_processes(script: Path, tmp_path: Path, *script_arguments: str) -> list[dict]:
    """Run ``script`` on 2 CPU processes (gloo); each writes ``result.rank<r>.json``."""
    result_file = tmp_path / "result"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(script),
        "--use_cpu",
        "--output_dir",
        str(tmp_path / "output"),
        "--result_file",
        str(result_file),
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        *script_arguments,
    ]
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
        # an empty Accelerate/HF home: no user accelerate config, no Hub access
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
    }
    completed = subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    # DDP's find_unused_parameters defaults to off (an extra autograd traversal per step)
    assert "find_unused_parameters=True" not in completed.stderr
    return [json.loads(Path(f"{result_file}.rank{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
@pytest.mark.parametrize("student", ["vit", "timm_deit_token"])
def test_two_process_data_parallel_run(tmp_path, student):
    results = launch_two_processes(
        SCRIPT,
        tmp_path,
        "--student",
        student,
        "--distillation_method",
        "kd",
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "2",
        "--num_train_epochs",
        "2",
        "--learning_rate",
        "3e-3",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
    )
    for rank, result in enumerate(results):
        assert result["rank"] == rank
        assert result["world_size"] == 2
        assert result["distributed_type"] == "DistributedType.MULTI_CPU"
        assert result["student_wrapper"] == "DistributedDataParallel"
        # every student parameter gets a gradient: no per-step search for unused ones
        assert result["find_unused_parameters"] is False
        assert result["teacher_wrapper"] == "ViTForImageClassification"  # never DDP
        assert result["teacher_requires_grad"] is False
        assert result["ranks_have_equal_weights"] is True
        assert result["weights_changed"] is True
        assert "eval_accuracy" in result["eval_metrics"]

    # 32 samples / (2 processes x 4 per device x 2 accumulated) = 2 steps per epoch, 2 epochs.
    logs = results[0]["training_logs"]
    assert [log["step"] for log in logs] == [1, 2, 3, 4]
    # The loss parts are averaged over both processes at log time: every rank logs the same
    # values, and they add up to the Trainer's own all-process mean loss (weights 1, w = 1).
    assert results[1]["training_logs"] == logs
    eval_keys = ["eval_loss", "eval_accuracy", "eval_top5_accuracy"]
    if student == "timm_deit_token":  # each head's accuracy, over both processes' samples
        eval_keys += ["eval_cls_accuracy", "eval_distillation_accuracy"]
    for key in eval_keys:
        assert results[1]["eval_metrics"][key] == results[0]["eval_metrics"][key]
    for log in logs:
        assert log["loss"] == pytest.approx(log["ce_loss"] + log["kd_loss"], rel=1e-5)

    # The main process saved the student and its card once; the card states the DDP setup.
    assert results[0]["saved_files"] == [
        "README.md",
        "config.json",
        "model.safetensors",
        "student_card.json",
        "training_curves.png",
    ]
    training = results[0]["card"]["training"]
    assert (training["world_size"], training["global_batch_size"]) == (2, 16)
    assert results[0]["card"]["eval_accuracy"] == results[0]["eval_metrics"]["eval_accuracy"]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_two_process_evaluation_and_prediction_drop_the_padding(tmp_path):
    # 9 images, 8 per process: the second process's batch is 1 image and 7 duplicates.
    results = launch_two_processes(
        EVALUATE_SCRIPT,
        tmp_path,
        "--distillation_method",
        "kd",
        "--per_device_eval_batch_size",
        "8",
        "--eval_with_teacher",
        "true",
    )
    for result in results:
        metrics, expected = result["metrics"], result["expected"]
        assert metrics["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-5)
        assert metrics["eval_ce_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-6)
        assert metrics["eval_kd_loss"] == pytest.approx(expected["eval_kd_loss"], rel=1e-5)
        assert metrics["eval_accuracy"] == pytest.approx(expected["eval_accuracy"], abs=1e-6)
        assert result["prediction_shape"] == [9, 5]  # the logits, padding dropped
        assert result["prediction_max_error"] < 1e-5
        for name in ("loss", "accuracy", "top5_accuracy"):
            assert result["prediction_metrics"][f"test_{name}"] == pytest.approx(
                metrics[f"eval_{name}"]
            )
