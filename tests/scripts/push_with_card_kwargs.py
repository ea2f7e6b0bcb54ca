"""Push a distilled student with the model-card arguments of transformers' own
``run_image_classification.py`` (plus ``language``, ``dataset_tags``, ``dataset_args``), for
``tests/test_trainer_card_kwargs.py``: ``python push_with_card_kwargs.py OUTPUT_DIR REPO_ID``
in a process whose environment points ``huggingface_hub`` at the loopback Hub.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for distill_helpers

from distill_helpers import PatternDataset, make_args, tiny_vit

from hf_kd.trainer import DistillationTrainer

# what examples/pytorch/image-classification/run_image_classification.py passes
CARD_KWARGS = {
    "finetuned_from": "google/vit-base-patch16-224-in21k",
    "tasks": "image-classification",
    "dataset": "someone/patterns",
    "tags": ["image-classification", "vision"],
}
# and what other transformers examples add
MORE_CARD_KWARGS = {"language": "en", "dataset_tags": "someone/patterns", "dataset_args": "shapes"}


def main(output_dir: str, repo_id: str) -> None:
    args = make_args(
        output_dir, max_steps=1, push_to_hub=True, hub_model_id=repo_id, hub_strategy="end"
    )
    trainer = DistillationTrainer(
        model=tiny_vit(seed=1),
        teacher_model=tiny_vit(seed=2),
        args=args,
        train_dataset=PatternDataset(8),
        eval_dataset=PatternDataset(8, seed=1),
        teacher_name="someone/teacher-vit",
    )
    trainer.train()
    trainer.evaluate()
    trainer.push_to_hub("Distilled", **CARD_KWARGS, **MORE_CARD_KWARGS)


if __name__ == "__main__":
    main(*sys.argv[1:])
