"""A saved student through ``transformers.pipeline`` and evaluate's ``image-classification``
evaluator, offline, with hf-kd's ``evaluate`` accuracy module: the accuracy that
``DistillationTrainer.evaluate()`` reported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Image
from distill_helpers import make_args
from evaluate import evaluator
from transformers import pipeline

from hf_kd.data import build_transforms, collate_image_batch, load_image_dataset
from hf_kd.metrics import load_accuracy_metric
from hf_kd.models import image_processor_for, load_classifier
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.trainer import DistillationTrainer

SAMPLES = 40
PREPROCESSING = ImagePreprocessing(
    image_size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear"
)
STUDENTS = {
    "timm": ("test_resnet", {}),
    "transformers": (
        "vit",
        {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1}
        | {"num_attention_heads": 2, "intermediate_size": 64},
    ),
}


@pytest.mark.parametrize("kind", sorted(STUDENTS))
def test_a_saved_student_gives_the_trainers_accuracy_through_pipeline_and_evaluator(
    tmp_path: Path, kind: str, no_network: None
) -> None:
    data = load_image_dataset("digits")
    split = data.splits["test"].select(range(SAMPLES))
    name, model_kwargs = STUDENTS[kind]
    torch.manual_seed(0)
    student = load_classifier(
        name, pretrained=False, id2label=data.id2label, model_kwargs=model_kwargs
    )
    trainer = DistillationTrainer(
        model=student,
        args=make_args(tmp_path / "run"),
        eval_dataset=split.with_transform(build_transforms(PREPROCESSING, train=False)),
        data_collator=collate_image_batch,
        processing_class=image_processor_for(student, PREPROCESSING),
        student_preprocessing=PREPROCESSING,
    )
    metrics = trainer.evaluate()
    trainer.save_model(str(tmp_path / "student"))

    saved = str(tmp_path / "student")
    split = split.cast_column("image", Image())  # PIL images, as pipelines take them
    accuracy = load_accuracy_metric()
    classifier = pipeline("image-classification", model=saved, device=-1)
    label2id = classifier.model.config.label2id
    predicted = [label2id[top[0]["label"]] for top in classifier(list(split["image"]), top_k=1)]
    from_pipeline = accuracy.compute(predictions=predicted, references=list(split["label"]))
    # evaluate 0.4.6's evaluator checks a Pipeline object against transformers'
    # TFPreTrainedModel, which transformers 5 no longer has; given the folder, it builds the
    # pipeline itself.
    results = evaluator("image-classification").compute(
        model_or_pipeline=saved,
        data=split,
        metric=accuracy,
        input_column="image",
        label_column="label",
        label_mapping=label2id,
        device=-1,
    )
    assert 0 < metrics["eval_accuracy"] < 1  # an untrained student: neither all nor none right
    assert from_pipeline["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)
    assert results["accuracy"] == pytest.approx(metrics["eval_accuracy"], abs=1e-6)
