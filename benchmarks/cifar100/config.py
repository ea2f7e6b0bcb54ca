"""What the CIFAR-100 benchmark runs: the tiers (data size, models, schedule, views, seeds),
the students (each method at its preset, the CE-only baseline, the MCLD ablations), the
order they run in, and where their inputs and outputs live."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_kd.data.transforms import PADDING_FRACTION

REPO_ROOT = Path(__file__).resolve().parents[2]

# the shared data folder next to the checkout (../shared/data/cifar100) or higher up; the Hub
# dataset when there is none
DEFAULT_DATASET = next(
    (
        str(folder / "shared" / "data" / "cifar100")
        for folder in REPO_ROOT.parents
        if (folder / "shared" / "data" / "cifar100").is_dir()
    ),
    "uoft-cs/cifar100",
)
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DATA_CACHE_DIR = REPO_ROOT / "outputs" / "accuracy_data"
PAPER_SCHEDULE_EPOCHS = 240
TEACHER_SAVE_STEPS = 100
VIEW_SEED = 1234
DOWNSAMPLING = "box"
# the Hub dataset that the data stands for (the shared copy is a bit-exact CIFAR-100), named
# in the kept models' cards
HUB_DATASET = "uoft-cs/cifar100"


@dataclass(frozen=True)
class TierConfig:
    """Everything that defines one budget: data, models, schedule, views, seeds."""

    name: str
    title: str
    image_size: int
    teacher_architecture: str
    student_architecture: str
    teacher_epochs: float
    student_epochs: float
    batch_size: int
    learning_rate: float
    momentum: float
    weight_decay: float
    schedule: str  # "cosine" or "multistep"
    milestones: tuple[int, ...] = ()
    pad: int = 2  # random-crop padding in pixels: 1/8 of the side, as hf_kd.data draws it
    num_views: int = 4  # 0: live teacher, fresh augmentation every epoch
    seeds: tuple[int, ...] = (0, 1, 2)
    torch_threads: int = 2
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adamw"
    # keyword arguments of timm.create_model for the student (e.g. a small ViT's sizes)
    student_model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pad != round(self.image_size * PADDING_FRACTION):
            raise ValueError(
                f"pad {self.pad} is not 1/8 of image_size {self.image_size}, the shift that "
                "hf_kd.data draws"
            )

    @property
    def stem(self) -> str:
        """File names of this tier's results: ``accuracy`` (cpu), ``accuracy_full``, ..."""
        return "accuracy" if self.name == "cpu" else f"accuracy_{self.name}"

    @property
    def transfer_stem(self) -> str:
        """File names of this tier's transfer results: ``transfer`` (cpu), ``transfer_full``."""
        return "transfer" if self.name == "cpu" else f"transfer_{self.name}"

    @property
    def report_section(self) -> str:
        return f"## Accuracy on CIFAR-100 ({self.title})"

    def scaled_warmup(self, paper_epochs: float) -> float:
        """A warm-up of ``paper_epochs`` of 240, scaled to this schedule's length."""
        return paper_epochs * self.student_epochs / PAPER_SCHEDULE_EPOCHS


TIERS = {
    "cpu": TierConfig(
        name="cpu",
        title="CPU budget",
        image_size=16,
        teacher_architecture="cifar_resnet14x2",
        student_architecture="cifar_resnet8",
        teacher_epochs=20,
        student_epochs=6,
        batch_size=128,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
    ),
    "full": TierConfig(
        name="full",
        title="full recipe",
        image_size=32,
        teacher_architecture="cifar_resnet32x4",
        student_architecture="cifar_resnet8x4",
        teacher_epochs=240,
        student_epochs=240,
        batch_size=64,
        learning_rate=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="multistep",
        milestones=(150, 180, 210),
        pad=4,
        num_views=0,
    ),
}


@dataclass(frozen=True)
class StudentSpec:
    """One student configuration: a method at its preset, plus optional loss overrides."""

    name: str
    method: str
    logit_standardization: bool = False
    ce_only: bool = False
    loss_overrides: dict[str, Any] = field(default_factory=dict)
    # other DistillationArguments of this student (e.g. distillation_token_loss)
    argument_overrides: dict[str, Any] = field(default_factory=dict)


METHODS = (
    StudentSpec("ce", "kd", ce_only=True),
    StudentSpec("kd", "kd"),
    StudentSpec("dkd", "dkd"),
    StudentSpec("kd_ls", "kd", logit_standardization=True),
    StudentSpec("normkd", "normkd"),
    StudentSpec("rld", "rld"),
    StudentSpec("mcld", "mcld"),
)

# Each reconstructed MCLD option of spec 6.3 and each term removed; on top of the defaults.
MCLD_ABLATIONS = (
    StudentSpec("mcld_similarity_cosine", "mcld", loss_overrides={"similarity": "cosine"}),
    StudentSpec("mcld_similarity_dot", "mcld", loss_overrides={"similarity": "dot"}),
    StudentSpec("mcld_tau_0.05", "mcld", loss_overrides={"tau": 0.05}),
    StudentSpec("mcld_tau_0.2", "mcld", loss_overrides={"tau": 0.2}),
    StudentSpec("mcld_target_mask_off", "mcld", loss_overrides={"target_mask": False}),
    StudentSpec(
        "mcld_target_mask_target_entry",
        "mcld",
        loss_overrides={"target_mask_variant": "target_entry"},
    ),
    StudentSpec(
        "mcld_sample_positives_teacher_prediction",
        "mcld",
        loss_overrides={"sample_positives": "teacher_prediction"},
    ),
    StudentSpec(
        "mcld_category_warmup_unscaled_20", "mcld", loss_overrides={"category_warmup_epochs": 20}
    ),
    StudentSpec("mcld_symmetric_instance", "mcld", loss_overrides={"symmetric_instance": True}),
    StudentSpec("mcld_no_instance", "mcld", loss_overrides={"instance_weight": 0.0}),
    StudentSpec("mcld_no_sample", "mcld", loss_overrides={"sample_weight": 0.0}),
    StudentSpec("mcld_no_category", "mcld", loss_overrides={"category_weight": 0.0}),
)


ABLATION_OVERRIDES = {spec.name: spec.loss_overrides for spec in MCLD_ABLATIONS}


def planned_runs(tier: TierConfig, ablations: bool = False) -> list[tuple[StudentSpec, int]]:
    """Priority order: every method at every seed (seed by seed); with ``ablations``, then
    every MCLD ablation at every seed (seed by seed), so each ablation is compared with the
    default on the same seeds."""
    plan = [(spec, seed) for seed in tier.seeds for spec in METHODS]
    if ablations:
        plan += [(spec, seed) for seed in tier.seeds for spec in MCLD_ABLATIONS]
    return plan


def names_an_ablation(names: Sequence[str] | None) -> bool:
    """Whether ``names`` (``--only``) include an MCLD ablation."""
    ablation_names = {spec.name for spec in MCLD_ABLATIONS}
    return any(name in ablation_names for name in names or ())


def model_name(tier: TierConfig, architecture: str, run: str) -> str:
    """A kept model's folder and Hub repo name: dataset, input size, architecture and run
    (``teacher``, or the student's name and seed), e.g.
    ``cifar100-16px-cifar_resnet8-mcld-seed0``."""
    return f"cifar100-{tier.image_size}px-{architecture}-{run.replace('_seed', '-seed')}"
