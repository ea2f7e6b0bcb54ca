"""DistillationTrainer: real Trainer runs on tiny models and a learnable in-memory task."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from distill_helpers import (
    PatternDataset,
    make_args,
    sharpened,
    tiny_deit,
    tiny_timm,
    tiny_timm_deit,
    tiny_vit,
)
from safetensors import safe_open
from transformers import EvalPrediction, TrainerCallback, TrainingArguments

from hf_kd.losses import available_losses
from hf_kd.metrics import compute_accuracy_metrics
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.teacher import PixelMapping
from hf_kd.trainer import DistillationTrainer

TEMPERATURE = 4.0  # the kd loss default


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def training_logs(trainer: DistillationTrainer) -> list[dict[str, float]]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


def hand_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """``T^2 (1/N) sum_i sum_c p_t (log p_t - log q_s)`` at T = 4."""
    teacher_log_probs = torch.log_softmax(teacher_logits.double() / TEMPERATURE, dim=1)
    student_log_probs = torch.log_softmax(student_logits.double() / TEMPERATURE, dim=1)
    rows = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(1)
    return float(TEMPERATURE**2 * rows.mean())


def state_dict_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]):
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "make_student",
    [tiny_vit, tiny_timm, tiny_timm_deit, tiny_deit],
    ids=["vit", "timm", "timm_deit_token", "deit_token"],
)
def test_gradient_accumulation_equals_one_large_batch(tmp_path, make_student):
    results = {}
    for batch_size, accumulation in ((8, 1), (4, 2)):
        student = make_student(seed=1)
        trainer = DistillationTrainer(
            model=student,
            teacher_model=tiny_vit(seed=2),
            args=make_args(
                tmp_path / f"ga{accumulation}",
                per_device_train_batch_size=batch_size,
                gradient_accumulation_steps=accumulation,
                max_steps=1,
                optim="sgd",
                learning_rate=0.5,
                lr_scheduler_type="constant",
                kd_weight=50.0,  # make the distillation gradient comparable to CE's
            ),
            train_dataset=PatternDataset(8),
        )
        trainer.train()
        (log,) = training_logs(trainer)
        results[accumulation] = log, state_dict_copy(student)
    (large_batch, large_weights), (accumulated, accumulated_weights) = results[1], results[2]
    for key in ("loss", "grad_norm", "ce_loss", "kd_loss", "kd_loss/kd"):
        assert accumulated[key] == pytest.approx(large_batch[key], rel=1e-5), key
    assert_same_weights(accumulated_weights, large_weights)


@pytest.mark.parametrize(
    ("make_student", "make_teacher", "teacher_prefix"),
    [
        (tiny_vit, tiny_timm, "timm_model"),
        (tiny_timm_deit, tiny_vit, "vit."),
        (tiny_deit, tiny_timm, "timm_model"),
    ],
    ids=["vit", "timm_deit_token", "deit_token"],
)
def test_resume_from_checkpoint_keeps_weights_and_warmup(
    tmp_path, make_student, make_teacher, teacher_prefix
):
    def run(output_dir: Path, resume_from: Path | None = None) -> DistillationTrainer:
        trainer = DistillationTrainer(
            model=make_student(seed=1 if resume_from is None else 7),
            teacher_model=make_teacher(seed=2),
            args=make_args(
                output_dir,
                per_device_train_batch_size=4,
                num_train_epochs=3,
                save_strategy="steps",
                save_steps=6,
                warmup_epochs=3,
                learning_rate=3e-3,
            ),
            train_dataset=PatternDataset(16),
        )
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        return trainer

    uninterrupted = run(tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoint-6"
    resumed = run(tmp_path / "resumed", resume_from=checkpoint)
    assert_same_weights(state_dict_copy(resumed.model), state_dict_copy(uninterrupted.model))

    # 4 steps per epoch, w = min(epoch / 3, 1) on 1-based whole epochs: the resumed run
    # (steps 7-12) continues in epoch 2, not back at epoch 1.
    expected = [1 / 3] * 4 + [2 / 3] * 4 + [1.0] * 4
    full_factors = [log["kd_warmup_factor"] for log in training_logs(uninterrupted)]
    resumed_factors = [log["kd_warmup_factor"] for log in training_logs(resumed) if log["step"] > 6]
    assert full_factors == pytest.approx(expected)
    assert resumed_factors == pytest.approx(expected[6:])

    # The checkpoint holds the student alone: as many tensors and values as the student (ViT
    # keys are saved under their legacy names), none of the teacher's tensors, and
    # optimizer state for exactly the student's parameters.
    student_state = uninterrupted.model.state_dict()
    saved_keys, saved_values = [], 0
    for path in checkpoint.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as weights:
            for key in weights.keys():
                saved_keys.append(key)
                saved_values += weights.get_tensor(key).numel()
    assert len(saved_keys) == len(student_state)
    assert saved_values == sum(tensor.numel() for tensor in student_state.values())
    assert not any(key.startswith(teacher_prefix) for key in saved_keys)
    optimizer_state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    saved_parameters = {
        index for group in optimizer_state["param_groups"] for index in group["params"]
    }
    assert len(saved_parameters) == sum(1 for _ in uninterrupted.model.parameters())


@pytest.mark.parametrize("make_student", [tiny_vit, tiny_timm], ids=["vit", "timm"])
def test_load_best_model_at_end_restores_every_layer(tmp_path, make_student):
    student = make_student(seed=1)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=tiny_vit(seed=2),
        args=make_args(
            tmp_path,
            num_train_epochs=3,
            learning_rate=3e-3,
            eval_strategy="epoch",
            save_strategy="epoch",
            load_best_model_at_end=True,
            # "best" = highest eval loss, so that an earlier checkpoint than the last is loaded
            metric_for_best_model="eval_loss",
            greater_is_better=True,
        ),
        train_dataset=PatternDataset(16),
        eval_dataset=PatternDataset(16, seed=1),
    )
    trainer.train()
    assert not trainer.state.best_model_checkpoint.endswith(f"-{trainer.state.global_step}")
    best = type(student).from_pretrained(trainer.state.best_model_checkpoint)
    assert_same_weights(state_dict_copy(student), state_dict_copy(best))


def test_bf16_autocast_on_cpu(tmp_path):
    student, teacher = tiny_vit(seed=1), tiny_vit(seed=2)
    output_dtypes: dict[str, list[torch.dtype]] = {"student": [], "teacher": []}
    for name, model in (("student", student), ("teacher", teacher)):
        model.classifier.register_forward_hook(
            lambda module, inputs, output, name=name: output_dtypes[name].append(output.dtype)
        )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, bf16=True, max_steps=2),
        train_dataset=PatternDataset(16),
    )
    trainer.train()
    assert set(output_dtypes["student"]) == {torch.bfloat16}
    assert set(output_dtypes["teacher"]) == {torch.bfloat16}
    for log in training_logs(trainer):
        assert all(math.isfinite(log[key]) for key in ("loss", "ce_loss", "kd_loss"))

    batch = next(iter(trainer.get_train_dataloader()))
    with trainer.accelerator.autocast():
        total = trainer.compute_loss(trainer.model_wrapped, batch)
        teacher_logits = trainer.teacher(batch)
    assert total.dtype == torch.float32
    assert teacher_logits.dtype == torch.float32
    assert output_dtypes["student"][-1] == torch.bfloat16


def test_evaluate_before_train_reports_student_metrics_without_the_teacher(tmp_path):
    student, teacher = tiny_vit(num_labels=10, seed=1), tiny_vit(num_labels=10, seed=2)
    teacher_calls = []
    teacher.register_forward_hook(lambda *unused: teacher_calls.append(1))
    eval_dataset = PatternDataset(24, num_classes=10)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path),
        eval_dataset=eval_dataset,
    )
    metrics = trainer.evaluate()

    with torch.no_grad():
        logits = student(pixel_values=eval_dataset.pixel_values).logits
    labels = eval_dataset.labels
    top5 = logits.topk(5, dim=1).indices
    assert metrics["eval_loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert metrics["eval_accuracy"] == pytest.approx(
        float((logits.argmax(1) == labels).float().mean())
    )
    assert metrics["eval_top5_accuracy"] == pytest.approx(
        float((top5 == labels[:, None]).any(1).float().mean())
    )
    assert teacher_calls == []
    assert not any(key.startswith("eval_kd") for key in metrics)


class LoopOutputRecorder(DistillationTrainer):
    """Keeps what each evaluation loop returned."""

    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        self.loop_outputs.append(output)
        return output


def test_predict_returns_logits_and_evaluate_keeps_none(tmp_path):
    student = tiny_vit(num_labels=10, seed=1)
    dataset = PatternDataset(21, num_classes=10)  # batches of 8, 8, 5
    trainer = LoopOutputRecorder(
        model=student, teacher_model=tiny_vit(num_labels=10, seed=2), args=make_args(tmp_path)
    )
    trainer.loop_outputs = []
    metrics = trainer.evaluate(dataset)
    assert trainer.loop_outputs[-1].predictions is None  # no [N, C] gathered
    prediction = trainer.predict(dataset)

    with torch.no_grad():
        logits = student(pixel_values=dataset.pixel_values).logits
    assert prediction.predictions.dtype == np.float32
    assert prediction.predictions.shape == (21, 10)
    np.testing.assert_allclose(prediction.predictions, logits.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(prediction.label_ids, dataset.labels.numpy())
    accuracy = float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())
    top5 = np.argsort(-prediction.predictions, axis=-1, kind="stable")[:, :5]
    top5_accuracy = float((top5 == prediction.label_ids[:, None]).any(axis=1).mean())
    assert metrics["eval_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert metrics["eval_top5_accuracy"] == pytest.approx(top5_accuracy, abs=1e-6)
    assert 0 < top5_accuracy < 1 and top5_accuracy > accuracy  # the check can tell them apart
    for name in ("accuracy", "top5_accuracy", "loss"):
        assert prediction.metrics[f"test_{name}"] == pytest.approx(metrics[f"eval_{name}"])


def test_a_user_compute_metrics_gets_the_logits_as_in_the_trainer(tmp_path):
    student = tiny_vit(num_labels=10, seed=1)
    dataset = PatternDataset(21, num_classes=10)
    seen = []

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        seen.append(prediction.predictions)
        return compute_accuracy_metrics(prediction)

    default = DistillationTrainer(
        model=student, teacher_model=tiny_vit(num_labels=10, seed=2), args=make_args(tmp_path)
    )
    custom = DistillationTrainer(
        model=student,
        teacher_model=tiny_vit(num_labels=10, seed=2),
        args=make_args(tmp_path),
        compute_metrics=compute_metrics,
    )
    expected, metrics = default.evaluate(dataset), custom.evaluate(dataset)
    assert [predictions.shape for predictions in seen] == [(21, 10)]
    for name in ("eval_loss", "eval_accuracy", "eval_top5_accuracy"):
        assert metrics[name] == pytest.approx(expected[name], abs=1e-6)


@pytest.mark.parametrize("num_images", [16, 9], ids=["two_full_batches", "short_last_batch"])
def test_eval_with_teacher_reports_every_loss_part_as_sample_means(tmp_path, num_images):
    # batches of 8: with 9 images the last batch of 1 weighs 1/9, not 1/2
    student, teacher = tiny_vit(seed=1), sharpened(tiny_vit(seed=2), 30.0)
    eval_dataset = PatternDataset(num_images)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, eval_with_teacher=True, per_device_eval_batch_size=8),
        eval_dataset=eval_dataset,
    )
    metrics = trainer.evaluate()
    with torch.no_grad():
        student_logits = student(pixel_values=eval_dataset.pixel_values).logits
        teacher_logits = teacher(pixel_values=eval_dataset.pixel_values).logits
    expected_ce = float(F.cross_entropy(student_logits.double(), eval_dataset.labels))
    assert metrics["eval_loss"] == pytest.approx(expected_ce, rel=1e-5)
    assert metrics["eval_ce_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-6)
    expected_kd = hand_kd_loss(student_logits, teacher_logits)
    assert metrics["eval_kd_loss"] == pytest.approx(expected_kd, rel=1e-5)
    assert metrics["eval_kd_loss/kd"] == pytest.approx(expected_kd, rel=1e-5)
    assert metrics["eval_kd_warmup_factor"] == 1.0


def test_training_lowers_the_loss_and_keeps_the_teacher_frozen(tmp_path):
    student, teacher = tiny_vit(seed=1), tiny_vit(seed=2)
    teacher_before = state_dict_copy(teacher)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, num_train_epochs=4, learning_rate=3e-3, logging_steps=4),
        train_dataset=PatternDataset(64),
        eval_dataset=PatternDataset(40, seed=1),
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < 0.7 * before["eval_loss"]
    assert after["eval_accuracy"] >= 0.8 > before["eval_accuracy"]
    logs = training_logs(trainer)
    assert logs[-1]["ce_loss"] < logs[0]["ce_loss"]

    assert_same_weights(state_dict_copy(teacher), teacher_before)
    assert not any(parameter.requires_grad for parameter in teacher.parameters())
    assert not teacher.training
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(parameter) for parameter in teacher.parameters()}


@pytest.mark.parametrize("method", available_losses())
def test_every_loss_part_is_logged(tmp_path, method):
    trainer = DistillationTrainer(
        model=tiny_vit(seed=1),
        teacher_model=tiny_vit(seed=2),
        args=make_args(
            tmp_path, distillation_method=method, max_steps=2, ce_weight=0.5, kd_weight=2.0
        ),
        train_dataset=PatternDataset(16),
    )
    trainer.train()
    loss_fn = trainer.distillation_loss
    steps_per_epoch = 2  # 16 samples, batches of 8
    for log in training_logs(trainer):
        terms = {
            key.removeprefix("kd_loss/"): log[key] for key in log if key.startswith("kd_loss/")
        }
        assert set(terms) <= set(loss_fn.term_names) and terms
        # the loss saw the 1-based epoch at the start of the step (MCLD's category ramp);
        # the log records the 0-based epoch at its end
        loss_epoch = 1.0 + (log["step"] - 1) / steps_per_epoch
        assert log["epoch"] == pytest.approx(log["step"] / steps_per_epoch)
        weights = loss_fn.term_weights(loss_epoch)
        assert log["kd_loss"] == pytest.approx(
            sum(weights[name] * value for name, value in terms.items()), rel=1e-5
        )
        # one micro-batch per logged step: the logged total is the objective itself
        assert log["loss"] == pytest.approx(
            0.5 * log["ce_loss"] + 2.0 * log["kd_warmup_factor"] * log["kd_loss"], rel=1e-5
        )


def test_linear_warmup_ramps_per_optimizer_step(tmp_path):
    trainer = DistillationTrainer(
        model=tiny_vit(seed=1),
        teacher_model=tiny_vit(seed=2),
        args=make_args(
            tmp_path,
            num_train_epochs=2,
            warmup_epochs=2,
            warmup_schedule="linear",
            distillation_preset="cifar100",
        ),
        train_dataset=PatternDataset(16),
    )
    trainer.train()
    # 2 steps per epoch: 1-based epochs 1, 1.5, 2, 2.5 -> w = min(epoch / 2, 1)
    factors = [log["kd_warmup_factor"] for log in training_logs(trainer)]
    assert factors == pytest.approx([0.5, 0.75, 1.0, 1.0])
    for log in training_logs(trainer):  # the KD preset: ce 0.1, kd 0.9
        expected = 0.1 * log["ce_loss"] + 0.9 * log["kd_warmup_factor"] * log["kd_loss"]
        assert log["loss"] == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_applies_to_the_training_cross_entropy(tmp_path):
    student = tiny_vit(seed=1)
    dataset = PatternDataset(8)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=tiny_vit(seed=2),
        args=make_args(tmp_path, max_steps=1, learning_rate=0.0, label_smoothing_factor=0.2),
        train_dataset=dataset,
    )
    trainer.train()
    with torch.no_grad():
        logits = student(pixel_values=dataset.pixel_values).logits
    expected = F.cross_entropy(logits, dataset.labels, label_smoothing=0.2)
    (log,) = training_logs(trainer)
    assert log["ce_loss"] == pytest.approx(float(expected), rel=1e-5)


STUDENT_16 = ImagePreprocessing((16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")
TEACHER_8 = ImagePreprocessing((8, 8), (0.4, 0.4, 0.4), (0.3, 0.3, 0.3), "bilinear")


@pytest.mark.parametrize("source", ["mapped", "flags", "column", "cached"])
def test_teacher_input_sources(tmp_path, source):
    """The logged KD loss equals the hand-computed one for each way the teacher gets its input."""
    student, teacher = tiny_vit(seed=1), sharpened(tiny_vit(image_size=8, seed=2), 30.0)
    pixel_values = PatternDataset(8).pixel_values
    with torch.no_grad():
        teacher_logits = teacher(
            pixel_values=PixelMapping(STUDENT_16, TEACHER_8)(pixel_values)
        ).logits
    options: dict = {}
    flags: dict = {}
    extra_columns: dict[str, torch.Tensor] = {}
    if source == "mapped":
        options = {"student_preprocessing": STUDENT_16, "teacher_preprocessing": TEACHER_8}
    elif source == "flags":
        options = {"student_preprocessing": STUDENT_16}
        flags = {
            "teacher_image_size": [8],
            "teacher_image_mean": list(TEACHER_8.mean),
            "teacher_image_std": list(TEACHER_8.std),
        }
    elif source == "column":
        extra_columns = {"teacher_pixel_values": PixelMapping(STUDENT_16, TEACHER_8)(pixel_values)}
    else:
        extra_columns = {"teacher_logits": teacher_logits}
        teacher = None
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, max_steps=1, learning_rate=0.0, **flags),
        train_dataset=PatternDataset(8, extra_columns=extra_columns),
        **options,
    )
    trainer.train()
    with torch.no_grad():
        student_logits = student(pixel_values=pixel_values).logits
    (log,) = training_logs(trainer)
    assert log["kd_loss"] == pytest.approx(hand_kd_loss(student_logits, teacher_logits), rel=1e-4)


class PoisonAfterFirstStep(TrainerCallback):
    """Turn a model's classifier bias into NaN after the first optimizer step."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            with torch.no_grad():
                self.model.classifier.bias.fill_(float("nan"))


def test_nan_teacher_logits_raise_on_the_first_step(tmp_path):
    teacher = tiny_vit(seed=2)
    with torch.no_grad():
        teacher.classifier.bias.fill_(float("nan"))
    trainer = DistillationTrainer(
        model=tiny_vit(seed=1),
        teacher_model=teacher,
        args=make_args(tmp_path, max_steps=2),
        train_dataset=PatternDataset(16),
    )
    with pytest.raises(ValueError, match="teacher_logits contain NaN or inf"):
        trainer.train()


@pytest.mark.parametrize("poisoned", ["teacher", "student"])
def test_nan_logits_later_raise_at_the_next_log(tmp_path, poisoned):
    student, teacher = tiny_vit(seed=1), tiny_vit(seed=2)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=make_args(tmp_path, max_steps=4, logging_steps=2),
        train_dataset=PatternDataset(32),
        callbacks=[PoisonAfterFirstStep(teacher if poisoned == "teacher" else student)],
    )
    with pytest.raises(ValueError, match=f"the {poisoned}'s logits .*NaN or inf before step 2"):
        trainer.train()


def test_labels_out_of_range_raise_on_the_first_step(tmp_path):
    dataset = PatternDataset(8)
    dataset.labels = dataset.labels + 3  # labels 3..7 for 5 classes
    trainer = DistillationTrainer(
        model=tiny_vit(seed=1),
        teacher_model=tiny_vit(seed=2),
        args=make_args(tmp_path, max_steps=1),
        train_dataset=dataset,
    )
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\]"):
        trainer.train()


def test_class_count_mismatch_raises_before_training(tmp_path):
    with pytest.raises(ValueError, match="teacher predicts 7 classes but the student 5"):
        DistillationTrainer(
            model=tiny_vit(), teacher_model=tiny_vit(num_labels=7), args=make_args(tmp_path)
        )


def test_label_map_mismatch_raises_before_training(tmp_path):
    reversed_names = {index: f"shape_{4 - index}" for index in range(5)}
    with pytest.raises(ValueError, match="label maps differ"):
        DistillationTrainer(
            model=tiny_vit(),
            teacher_model=tiny_vit(id2label=reversed_names),
            args=make_args(tmp_path),
        )


def test_plain_training_arguments_or_a_loss_function_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="needs args=DistillationArguments"):
        DistillationTrainer(
            model=tiny_vit(),
            teacher_model=tiny_vit(),
            args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
        )
    with pytest.raises(ValueError, match="instead of compute_loss_func"):
        DistillationTrainer(
            model=tiny_vit(),
            teacher_model=tiny_vit(),
            args=make_args(tmp_path),
            compute_loss_func=lambda outputs, labels, num_items_in_batch: outputs.logits.sum(),
        )
