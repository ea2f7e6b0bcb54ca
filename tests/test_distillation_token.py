"""Students with a distillation token (DeiT): detection, each head's objective, evaluation
per head, cached teacher logits, and export with both heads (timm and transformers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from distill_helpers import (
    TINY_TIMM_DEIT_KWARGS,
    PatternDataset,
    make_args,
    sharpened,
    tiny_deit,
    tiny_timm,
    tiny_timm_deit,
    tiny_vit,
)
from PIL import Image
from transformers import (
    AutoModelForImageClassification,
    DeiTForImageClassificationWithTeacher,
    pipeline,
)

from hf_kd.distillation_token import forward_heads, has_distillation_token
from hf_kd.model_card import CARD_DATA_FILE
from hf_kd.models import image_processor_for, load_classifier, preprocessing_for
from hf_kd.trainer import DistillationTrainer

TOKEN_STUDENTS = pytest.mark.parametrize(
    "make_student", [tiny_timm_deit, tiny_deit], ids=["timm", "transformers"]
)


def head_weights(model: torch.nn.Module) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """The class head's and the distillation head's weight matrices."""
    if isinstance(model, DeiTForImageClassificationWithTeacher):
        return model.cls_classifier.weight, model.distillation_classifier.weight
    head, head_dist = model.timm_model.get_classifier()
    return head.weight, head_dist.weight


def test_students_with_a_distillation_head_are_detected() -> None:
    plain_timm_vit = load_classifier(
        "deit_tiny_patch16_224", num_labels=5, pretrained=False, model_kwargs=TINY_TIMM_DEIT_KWARGS
    )
    assert has_distillation_token(tiny_timm_deit())
    assert has_distillation_token(tiny_deit())
    for student in (tiny_vit(), tiny_timm(), plain_timm_vit):
        assert not has_distillation_token(student)


def test_the_token_learns_the_method_or_hard_distillation(tmp_path) -> None:
    args = make_args(tmp_path, distillation_method="mcld", distillation_preset="cifar100")
    assert args.resolve_objective(distillation_token=True).method == "mcld"  # the default
    hard_args = make_args(
        tmp_path,
        distillation_method="mcld",
        distillation_preset="cifar100",
        distillation_token_loss="hard",
    )
    assert hard_args.resolve_objective().method == "mcld"  # no token: the method
    hard = hard_args.resolve_objective(distillation_token=True)
    assert (hard.method, hard.ce_weight, hard.kd_weight) == ("hard", 0.5, 0.5)
    with_kwargs = make_args(
        tmp_path,
        distillation_method="kd",
        loss_kwargs={"temperature": 2.0},
        distillation_token_loss="hard",
    )
    with pytest.raises(ValueError, match="--distillation_token_loss method"):
        with_kwargs.resolve_objective(distillation_token=True)
    with pytest.raises(ValueError, match="distillation_token_loss must be one of"):
        make_args(tmp_path, distillation_token_loss="soft")


@TOKEN_STUDENTS
def test_each_head_learns_its_own_objective(tmp_path, make_student) -> None:
    """CE reaches the class head only, the distillation loss the distillation head only.
    Before, both heads' average took both terms."""
    gradients = {}
    for name, weights in (("ce", (1.0, 0.0)), ("distillation", (0.0, 1.0))):
        student = make_student(seed=1)
        trainer = DistillationTrainer(
            model=student,
            teacher_model=tiny_vit(seed=2),
            args=make_args(tmp_path / name, ce_weight=weights[0], kd_weight=weights[1]),
            train_dataset=PatternDataset(8),
        )
        inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        student.train()
        trainer.compute_loss(student, inputs).backward()
        gradients[name] = [
            torch.zeros(()) if weight.grad is None else weight.grad.abs().sum()
            for weight in head_weights(student)
        ]
    (ce_on_cls, ce_on_distillation), (kd_on_cls, kd_on_distillation) = gradients.values()
    assert ce_on_cls > 0 and ce_on_distillation == 0
    assert kd_on_distillation > 0 and kd_on_cls == 0


@TOKEN_STUDENTS
def test_forward_heads_average_is_the_models_prediction(make_student) -> None:
    student = make_student(seed=3)
    pixel_values = PatternDataset(6).pixel_values
    student.eval()
    with torch.no_grad():
        evaluated = forward_heads(student, student, pixel_values)
        prediction = student(pixel_values=pixel_values).logits
    torch.testing.assert_close(evaluated.logits, prediction, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        evaluated.logits, (evaluated.cls_logits + evaluated.distillation_logits) / 2
    )
    assert not torch.allclose(evaluated.cls_logits, evaluated.distillation_logits)
    # in train mode (no dropout in these students) the trained heads are the evaluated ones
    DistillationTrainer(model=student, args=make_args("unused"), train_dataset=PatternDataset(8))
    student.train()
    with torch.no_grad():
        trained = forward_heads(student, student, pixel_values)
    torch.testing.assert_close(trained.cls_logits, evaluated.cls_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        trained.distillation_logits, evaluated.distillation_logits, rtol=1e-5, atol=1e-6
    )


@TOKEN_STUDENTS
def test_evaluation_reports_each_head_and_the_objective_parts(tmp_path, make_student) -> None:
    student, teacher = make_student(seed=1), sharpened(tiny_vit(seed=2), 30.0)
    eval_dataset = PatternDataset(12, seed=4)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(
            tmp_path,
            eval_with_teacher=True,
            per_device_eval_batch_size=6,
            distillation_token_loss="hard",
        ),
        eval_dataset=eval_dataset,
    )
    metrics = trainer.evaluate()
    student.eval()
    with torch.no_grad():
        heads = forward_heads(student, student, eval_dataset.pixel_values)
        teacher_logits = teacher(pixel_values=eval_dataset.pixel_values).logits
    labels = eval_dataset.labels

    def accuracy(logits: torch.Tensor) -> float:
        return float((logits.argmax(dim=1) == labels).float().mean())

    assert metrics["eval_accuracy"] == pytest.approx(accuracy(heads.logits))
    assert metrics["eval_cls_accuracy"] == pytest.approx(accuracy(heads.cls_logits))
    assert metrics["eval_distillation_accuracy"] == pytest.approx(
        accuracy(heads.distillation_logits)
    )
    assert metrics["eval_loss"] == pytest.approx(float(F.cross_entropy(heads.logits, labels)))
    # two equal batches: the mean of batch means is the mean over the set
    assert metrics["eval_ce_loss"] == pytest.approx(
        float(F.cross_entropy(heads.cls_logits, labels)), rel=1e-5
    )
    hard = F.cross_entropy(heads.distillation_logits, teacher_logits.argmax(dim=1))
    assert metrics["eval_kd_loss"] == pytest.approx(float(hard), rel=1e-5)
    assert metrics["eval_kd_loss/hard"] == pytest.approx(float(hard), rel=1e-5)


def test_cached_teacher_logits_train_the_token_as_the_live_teacher_does(tmp_path) -> None:
    teacher = sharpened(tiny_vit(seed=2), 30.0)
    dataset = PatternDataset(8)
    with torch.no_grad():
        teacher_logits = teacher(pixel_values=dataset.pixel_values).logits
    weights = []
    for name, teacher_model, columns in (
        ("live", teacher, {}),
        ("cached", None, {"teacher_logits": teacher_logits}),
    ):
        student = tiny_timm_deit(seed=1)
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher_model,
            args=make_args(tmp_path / name, max_steps=2),
            train_dataset=PatternDataset(8, extra_columns=columns),
        )
        trainer.train()
        weights.append([tensor.detach().clone() for tensor in head_weights(student)])
    for live, cached in zip(*weights, strict=True):
        torch.testing.assert_close(cached, live, rtol=0, atol=1e-6)


def trained_token_student(tmp_path, make_student) -> tuple[torch.nn.Module, str]:
    """A student trained for two steps, evaluated and saved with its card by the trainer;
    its folder. The card states the token, each head's objective and accuracy."""
    student = make_student(seed=1)
    output_dir = tmp_path / "student"
    preprocessing = preprocessing_for(student)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=tiny_vit(seed=2),
        args=make_args(output_dir, max_steps=2, learning_rate=1e-2, distillation_token_loss="hard"),
        train_dataset=PatternDataset(8),
        eval_dataset=PatternDataset(10, seed=5),
        processing_class=image_processor_for(student, preprocessing),
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()
    card = json.loads((output_dir / CARD_DATA_FILE).read_text())
    assert card["distillation_token"] is True and card["method"] == "hard"
    assert card["eval_cls_accuracy"] == metrics["eval_cls_accuracy"]
    assert card["eval_distillation_accuracy"] == metrics["eval_distillation_accuracy"]
    readme = (output_dir / "README.md").read_text()
    assert "CE(z_cls, labels) + kd_weight * w(epoch) * L_hard(z_dist" in readme
    assert "| Student's distillation head (top-1) |" in readme
    assert "{touvron2021training," in readme
    return student.eval(), str(output_dir)


def assert_same_state(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(second[key], first[key], rtol=0, atol=0, msg=key)


def assert_pipeline_gives_the_average(classifier, student, image: Image.Image) -> None:
    """The pipeline's top class and score are the softmax of the averaged heads."""
    inputs = classifier.image_processor(image, return_tensors="pt")
    with torch.no_grad():
        heads = forward_heads(student, student, inputs["pixel_values"])
    (best,) = classifier(image, top_k=1)
    probabilities = heads.logits.softmax(dim=1)[0]
    assert best["label"] == student.config.id2label[int(probabilities.argmax())]
    assert best["score"] == pytest.approx(float(probabilities.max()), rel=1e-5)


def test_timm_student_reloads_with_both_heads(tmp_path) -> None:
    student, output_dir = trained_token_student(tmp_path, tiny_timm_deit)
    trained = student.timm_model.state_dict()
    assert "head_dist.weight" in trained
    reloaded_timm = timm.create_model(f"local-dir:{output_dir}", pretrained=True)
    assert_same_state(trained, reloaded_timm.state_dict())
    reloaded = AutoModelForImageClassification.from_pretrained(output_dir)
    assert has_distillation_token(reloaded)
    assert_same_state(trained, reloaded.timm_model.state_dict())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), np.uint8))
    assert_pipeline_gives_the_average(
        pipeline("image-classification", model=output_dir), reloaded.eval(), image
    )


def test_transformers_student_reloads_with_both_heads(tmp_path) -> None:
    student, output_dir = trained_token_student(tmp_path, tiny_deit)
    reloaded = load_classifier(output_dir)
    assert isinstance(reloaded, DeiTForImageClassificationWithTeacher)
    assert_same_state(student.state_dict(), reloaded.state_dict())
    classifier = pipeline("image-classification", model=output_dir)
    assert isinstance(classifier.model, DeiTForImageClassificationWithTeacher)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), np.uint8))
    assert_pipeline_gives_the_average(classifier, reloaded.eval(), image)
