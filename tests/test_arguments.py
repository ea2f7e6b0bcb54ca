"""DistillationArguments: --help, validation, and explicit > preset > default resolution."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import HfArgumentParser, TrainingArguments

from hf_kd.arguments import DistillationArguments
from hf_kd.losses import available_losses, preset
from hf_kd.objective import DistillationObjective
from hf_kd.preprocessing import ImagePreprocessing

# The official outer warm-up of each method (spec sections 1-6): DKD-style losses ramp over
# 20 epochs on CIFAR-100, the others have none.
OFFICIAL_WARMUP = {"kd": 0, "normkd": 0, "mcld": 0, "dkd": 20, "rld": 20, "normkd_dkd": 20}

DISTILLATION_FIELDS = [
    field.name
    for field in dataclasses.fields(DistillationArguments)
    if field.name not in {f.name for f in dataclasses.fields(TrainingArguments)}
]


def make(tmp_path, **values) -> DistillationArguments:
    values.setdefault("distillation_method", "kd")
    return DistillationArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], **values)


def test_help_documents_every_field(capsys):
    for field in dataclasses.fields(DistillationArguments):
        if field.name in DISTILLATION_FIELDS or field.name == "remove_unused_columns":
            assert field.metadata.get("help"), f"{field.name} has no help"
    with pytest.raises(SystemExit) as exit_info:
        HfArgumentParser(DistillationArguments).parse_args_into_dataclasses(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert set(DISTILLATION_FIELDS) == {
        "distillation_method",
        "distillation_token_loss",
        "distillation_preset",
        "ce_weight",
        "kd_weight",
        "warmup_epochs",
        "warmup_schedule",
        "logit_standardization",
        "loss_kwargs",
        "teacher_image_size",
        "teacher_image_mean",
        "teacher_image_std",
        "teacher_interpolation",
        "eval_with_teacher",
        "channels_last",
        "teacher_torch_compile",
        "teacher_torch_compile_backend",
        "teacher_torch_compile_mode",
    }
    for name in DISTILLATION_FIELDS:
        assert f"--{name}" in usage
    # The changed parent defaults are stated with their reasons.
    assert "KeyError: 'image'" in " ".join(usage.split())
    assert "a device synchronisation in every training step" in " ".join(usage.split())


def test_defaults(tmp_path):
    fields = {field.name: field for field in dataclasses.fields(DistillationArguments)}
    assert fields["distillation_method"].default == "mcld"
    assert fields["remove_unused_columns"].default is False
    assert fields["logging_nan_inf_filter"].default is False
    args = make(tmp_path)
    assert args.remove_unused_columns is False
    assert args.logging_nan_inf_filter is False
    assert args.channels_last is False
    assert args.resolve_teacher_compile() is None
    assert args.resolve_objective() == DistillationObjective(
        method="kd",
        ce_weight=1.0,
        kd_weight=1.0,
        warmup_epochs=0.0,
        warmup_schedule="epoch",
        loss_kwargs={"logit_standardization": False},
    )


def test_default_method_is_validated_through_the_registry(tmp_path):
    if "mcld" in available_losses():
        args = DistillationArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
        assert args.resolve_objective().method == "mcld"
    else:
        with pytest.raises(ValueError, match="unknown --distillation_method 'mcld'"):
            DistillationArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])


def test_command_line_parsing(tmp_path):
    parser = HfArgumentParser(DistillationArguments)
    (args,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--use_cpu",
            "--distillation_method",
            "kd",
            "--distillation_preset",
            "imagenet",
            "--loss_kwargs",
            '{"temperature": 3.0}',
            "--ce_weight",
            "0.25",
            "--teacher_image_size",
            "24",
            "32",
            "--teacher_image_mean",
            "0.5",
            "0.5",
            "0.5",
            "--teacher_interpolation",
            "bilinear",
            "--warmup_schedule",
            "linear",
        ]
    )
    assert args.loss_kwargs == {"temperature": 3.0}
    assert args.teacher_image_size == [24, 32]
    objective = args.resolve_objective()
    # explicit ce_weight and temperature win; kd_weight comes from the ImageNet KD preset
    assert objective.ce_weight == 0.25
    assert objective.kd_weight == 0.5
    assert objective.loss_kwargs == {"temperature": 3.0, "logit_standardization": False}
    assert objective.warmup_schedule == "linear"


def test_preset_then_explicit_values(tmp_path):
    objective = make(tmp_path, distillation_preset="cifar100").resolve_objective()
    assert (objective.ce_weight, objective.kd_weight, objective.warmup_epochs) == (0.1, 0.9, 0)
    assert objective.loss_kwargs == {"temperature": 4.0, "logit_standardization": False}

    objective = make(
        tmp_path,
        distillation_preset="cifar100",
        kd_weight=2.0,
        warmup_epochs=3,
        loss_kwargs={"temperature": 8.0},
    ).resolve_objective()
    assert (objective.ce_weight, objective.kd_weight, objective.warmup_epochs) == (0.1, 2.0, 3)
    assert objective.loss_kwargs["temperature"] == 8.0


def test_logit_standardization_takes_the_ls_preset(tmp_path):
    objective = make(
        tmp_path, distillation_preset="cifar100", logit_standardization=True
    ).resolve_objective()
    # LS paper's KD setting on CIFAR-100: base temperature 2, kd weight 9 (spec section 3)
    assert (objective.ce_weight, objective.kd_weight) == (0.1, 9.0)
    assert objective.loss_kwargs == {"temperature": 2.0, "logit_standardization": True}


@pytest.mark.parametrize("method", available_losses())
def test_every_registered_loss_resolves_and_builds(tmp_path, method):
    objective = make(tmp_path, distillation_method=method).resolve_objective()
    assert objective.method == method
    assert (objective.ce_weight, objective.kd_weight) == (1.0, 1.0)
    if method in OFFICIAL_WARMUP:
        assert objective.warmup_epochs == OFFICIAL_WARMUP[method]
    for dataset in ("cifar100", "imagenet"):
        expected = preset(method, dataset)
        objective = make(
            tmp_path, distillation_method=method, distillation_preset=dataset
        ).resolve_objective()
        assert (objective.ce_weight, objective.kd_weight, objective.warmup_epochs) == (
            expected.ce_weight,
            expected.kd_weight,
            expected.warmup_epochs,
        )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"distillation_method": "kdd"}, r"unknown --distillation_method 'kdd'; registered.*kd"),
        ({"loss_kwargs": "{temperature: 2}"}, "must be a JSON object"),
        ({"loss_kwargs": "[2.0]"}, r"must be a JSON object \(a dict\), got list"),
        ({"loss_kwargs": {"temprature": 2.0}}, r"unknown hyperparameter.*temprature.*temperature"),
        ({"loss_kwargs": {"temperature": -1.0}}, "temperature must be a finite number > 0"),
        ({"loss_kwargs": {"logit_standardization": True}}, "--logit_standardization"),
        ({"distillation_preset": "cifar10"}, "unknown --distillation_preset 'cifar10'"),
        ({"ce_weight": -0.1}, "--ce_weight must be >= 0"),
        ({"kd_weight": float("nan")}, "--kd_weight must be >= 0"),
        ({"warmup_epochs": -1}, "--warmup_epochs must be >= 0"),
        ({"ce_weight": 0.0, "kd_weight": 0.0}, "nothing would be trained"),
        ({"warmup_schedule": "cosine"}, "--warmup_schedule must be one of"),
        ({"teacher_image_size": [8, 8, 8]}, "--teacher_image_size takes one positive size"),
        ({"teacher_image_size": [0]}, "--teacher_image_size takes one positive size"),
        ({"teacher_image_mean": [0.5, 0.5]}, "--teacher_image_mean takes 3 values"),
        ({"teacher_image_std": [0.2, 0.0, 0.2]}, "--teacher_image_std must be > 0"),
        ({"teacher_interpolation": "lanczos"}, "--teacher_interpolation must be one of"),
        ({"teacher_torch_compile_backend": "inductr"}, "unknown --teacher_torch_compile_backend"),
        ({"teacher_torch_compile_mode": "fast"}, "--teacher_torch_compile_mode must be one of"),
    ],
)
def test_bad_values_raise(tmp_path, values, message):
    with pytest.raises(ValueError, match=message):
        make(tmp_path, **values)


def test_teacher_compile_options(tmp_path):
    assert make(tmp_path, teacher_torch_compile=True).resolve_teacher_compile() == {
        "backend": "inductor"
    }
    # A backend or mode alone turns teacher compilation on, as the parent's flags do.
    args = make(tmp_path, teacher_torch_compile_backend="aot_eager")
    assert args.teacher_torch_compile and not args.torch_compile
    assert args.resolve_teacher_compile() == {"backend": "aot_eager"}
    args = make(tmp_path, teacher_torch_compile_mode="max-autotune")
    assert args.resolve_teacher_compile() == {"backend": "inductor", "mode": "max-autotune"}
    # Without a backend of its own the teacher takes the student's.
    args = make(tmp_path, torch_compile_backend="aot_eager", teacher_torch_compile=True)
    assert args.resolve_teacher_compile() == {"backend": "aot_eager"}
    # The student's compilation alone leaves the teacher eager.
    assert make(tmp_path, torch_compile=True).resolve_teacher_compile() is None


def test_teacher_preprocessing_overrides(tmp_path):
    teacher = ImagePreprocessing((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")
    assert make(tmp_path).resolve_teacher_preprocessing(teacher) == teacher
    assert make(tmp_path).resolve_teacher_preprocessing(None) is None

    args = make(tmp_path, teacher_image_size=[24], teacher_interpolation="bicubic")
    assert args.resolve_teacher_preprocessing(teacher) == ImagePreprocessing(
        (24, 24), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic"
    )
    args = make(tmp_path, teacher_image_size=[24, 40], teacher_image_std=[0.1, 0.2, 0.3])
    assert args.resolve_teacher_preprocessing(None) == ImagePreprocessing(
        (24, 40), std=(0.1, 0.2, 0.3)
    )
    with pytest.raises(ValueError, match="pass --teacher_image_size"):
        make(tmp_path, teacher_image_mean=[0.5, 0.5, 0.5]).resolve_teacher_preprocessing(None)


@pytest.mark.parametrize(
    ("schedule", "warmup_epochs", "epoch", "expected"),
    [
        ("epoch", 20, 1.0, 1 / 20),
        ("epoch", 20, 1.99, 1 / 20),
        ("epoch", 20, 2.0, 2 / 20),
        ("epoch", 20, 20.0, 1.0),
        ("epoch", 20, 37.5, 1.0),
        ("epoch", 0, 1.0, 1.0),
        ("linear", 20, 1.5, 1.5 / 20),
        ("linear", 4, 3.0, 0.75),
        ("linear", 4, 9.0, 1.0),
        ("linear", 0, 1.0, 1.0),
    ],
)
def test_kd_warmup_factor(schedule, warmup_epochs, epoch, expected):
    objective = DistillationObjective(
        method="kd",
        ce_weight=1.0,
        kd_weight=1.0,
        warmup_epochs=warmup_epochs,
        warmup_schedule=schedule,
    )
    assert objective.kd_warmup_factor(epoch) == pytest.approx(expected, abs=1e-12)
