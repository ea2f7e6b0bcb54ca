"""A 2-process evaluation for ``tests/test_distributed.py``: 9 images, batches of 8.

Run as ``accelerate launch --multi_gpu --num_processes 2 tests/scripts/evaluate_ddp.py
--use_cpu --output_dir DIR --result_file FILE``. Accelerate pads the second process's
batch with 7 duplicates; every rank evaluates the student with the teacher and writes
``FILE.rank<r>.json`` with the metrics, ``predict()``'s output and, computed on the whole
set in one process, the values they must equal.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for distill_helpers

from ddp_script import parse_arguments, write_result
from distill_helpers import PatternDataset, sharpened, tiny_vit

from hf_kd.losses import build_loss
from hf_kd.trainer import DistillationTrainer


def main() -> None:
    script_args, args = parse_arguments()
    student, teacher = tiny_vit(seed=1), sharpened(tiny_vit(seed=2), 30.0)
    dataset = PatternDataset(9)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, eval_dataset=dataset
    )
    assert trainer.accelerator.num_processes == 2
    metrics = trainer.evaluate()
    prediction = trainer.predict(dataset)
    with torch.no_grad():
        student_logits = student(pixel_values=dataset.pixel_values).logits
        teacher_logits = teacher(pixel_values=dataset.pixel_values).logits
    expected = {
        "eval_loss": float(F.cross_entropy(student_logits, dataset.labels)),
        "eval_accuracy": float((student_logits.argmax(1) == dataset.labels).float().mean()),
        "eval_kd_loss": float(
            build_loss("kd")(student_logits, teacher_logits, dataset.labels).loss
        ),
    }
    result = {
        "rank": trainer.accelerator.process_index,
        "metrics": metrics,
        "expected": expected,
        "prediction_shape": list(prediction.predictions.shape),
        "prediction_max_error": float(abs(prediction.predictions - student_logits.numpy()).max()),
        "prediction_metrics": prediction.metrics,
    }
    write_result(script_args, trainer.accelerator.process_index, result)
    # gloo's threads must stop before the interpreter exits, or exit can abort the process
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
