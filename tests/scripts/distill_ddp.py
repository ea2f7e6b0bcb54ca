"""A tiny data-parallel distillation run for ``tests/test_distributed.py``.

Run as ``accelerate launch --multi_gpu --num_processes 2 tests/scripts/distill_ddp.py
--use_cpu --output_dir DIR --result_file FILE``. Every rank asserts that it runs in a
2-process group, trains, evaluates, saves the student with its card and writes
``FILE.rank<r>.json`` for the test to check.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for distill_helpers

from ddp_script import parse_arguments, write_result
from distill_helpers import PatternDataset, tiny_timm_deit, tiny_vit

from hf_kd.trainer import DistillationTrainer


def main() -> None:
    script_args, args = parse_arguments()
    make_student = {"vit": tiny_vit, "timm_deit_token": tiny_timm_deit}[script_args.student]
    student, teacher = make_student(seed=1), tiny_vit(seed=2)
    initial_weights = torch.nn.utils.parameters_to_vector(student.parameters()).detach().clone()
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=PatternDataset(32),
        eval_dataset=PatternDataset(16, seed=1),
    )
    accelerator = trainer.accelerator
    world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    assert accelerator.num_processes == 2 and world_size == 2, (
        f"expected 2 processes, got num_processes={accelerator.num_processes}, "
        f"world_size={world_size}"
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()  # the main process writes the student and its card
    accelerator.wait_for_everyone()

    weights = torch.nn.utils.parameters_to_vector(student.parameters()).detach()
    all_weights = accelerator.gather(weights[None]).cpu()
    result = {
        "rank": accelerator.process_index,
        "world_size": world_size,
        "distributed_type": str(accelerator.distributed_type),
        "student_wrapper": type(trainer.model_wrapped).__name__,
        "find_unused_parameters": trainer.model_wrapped.find_unused_parameters,
        "teacher_wrapper": type(trainer.teacher.model).__name__,
        "teacher_requires_grad": any(p.requires_grad for p in teacher.parameters()),
        "ranks_have_equal_weights": bool(torch.equal(all_weights[0], all_weights[1])),
        "weights_changed": bool((weights.cpu() - initial_weights.cpu()).abs().max() > 0),
        "training_logs": [entry for entry in trainer.state.log_history if "loss" in entry],
        "eval_metrics": metrics,
        "saved_files": sorted(os.listdir(args.output_dir)),
        "card": json.loads((Path(args.output_dir) / "student_card.json").read_text()),
    }
    write_result(script_args, accelerator.process_index, result)
    # gloo's threads must stop before the interpreter exits, or exit can abort the process
    accelerator.end_training()


if __name__ == "__main__":
    main()
