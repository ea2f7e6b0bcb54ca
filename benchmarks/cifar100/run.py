"""The accuracy stage: the teacher once, its cached logits, then every planned student not
yet finished, each kept as a Hub-ready folder and recorded at once (a rerun resumes)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from benchmarks.cifar100.config import (
    DATA_CACHE_DIR,
    MCLD_ABLATIONS,
    METHODS,
    StudentSpec,
    TierConfig,
    model_name,
    names_an_ablation,
    planned_runs,
)
from benchmarks.cifar100.data import load_tensor_data
from benchmarks.cifar100.keep import is_kept
from benchmarks.cifar100.records import record_path, update_record, write_record
from benchmarks.cifar100.report import write_report
from benchmarks.cifar100.training import (
    cached_teacher_logits,
    keep_trained_teacher,
    train_student,
    train_teacher,
)
from hf_kd.models import load_classifier

MODELS_DIRECTORY = "models"


def kept_models_dir(work_dir: Path) -> Path:
    """Where the kept, Hub-ready model folders are: ``<work_dir>/models``."""
    return work_dir / MODELS_DIRECTORY


def teacher_folder(work_dir: Path, tier: TierConfig) -> Path:
    return kept_models_dir(work_dir) / model_name(tier, tier.teacher_architecture, "teacher")


def student_folder(work_dir: Path, tier: TierConfig, spec: StudentSpec, seed: int) -> Path:
    run = f"{spec.name}_seed{seed}"
    return kept_models_dir(work_dir) / model_name(tier, tier.student_architecture, run)


def run_benchmark(
    tier: TierConfig,
    dataset_name: str,
    work_dir: Path,
    results_dir: Path,
    limit: int | None = None,
    only: Sequence[str] | None = None,
    readme: Path | None = None,
    ablation_seeds: Sequence[int] = (),
    data_cache_dir: Path = DATA_CACHE_DIR,
    ablations: bool = False,
) -> None:
    """Train the teacher (once), cache its logits, then every planned student run not yet
    finished (only those named in ``only``, if given): the methods, and with ``ablations``
    (or an ablation named in ``only``) the MCLD ablations; with ``ablation_seeds``, also the
    default MCLD and its ablations at those extra seeds, to confirm a small difference.

    A run is finished when it has its record and its kept folder; a teacher trained by an
    earlier run that did not keep it is kept without training again.
    """
    runs_dir = results_dir / f"{tier.stem}_runs"
    data = load_tensor_data(dataset_name, tier.image_size, data_cache_dir, limit)
    teacher_dir, teacher_keep = work_dir / "teacher", teacher_folder(work_dir, tier)
    if not record_path(runs_dir, "teacher").exists() or not teacher_dir.exists():
        teacher_dir, record = train_teacher(tier, data, work_dir, teacher_keep)
        write_record(runs_dir, {**record, "model_dir": str(teacher_keep)}, tier, dataset_name)
    elif not is_kept(teacher_keep):
        keep_trained_teacher(tier, data, work_dir, teacher_keep)
    teacher_record = json.loads(record_path(runs_dir, "teacher").read_text())
    if teacher_record.get("model_dir") != str(teacher_keep):  # kept after it was recorded
        teacher_record = update_record(runs_dir, "teacher", model_dir=str(teacher_keep))
    teacher = load_classifier(str(teacher_dir))
    cached = None
    if tier.num_views > 0:
        cached = cached_teacher_logits(teacher, data, tier, work_dir)
    default_mcld = next(spec for spec in METHODS if spec.name == "mcld")
    extra = [(spec, seed) for seed in ablation_seeds for spec in (default_mcld, *MCLD_ABLATIONS)]
    plan = planned_runs(tier, ablations or names_an_ablation(only))
    for spec, seed in [*plan, *extra]:
        folder = student_folder(work_dir, tier, spec, seed)
        if record_path(runs_dir, f"{spec.name}_seed{seed}").exists() and is_kept(folder):
            continue
        if only is not None and spec.name not in only:
            continue
        record = train_student(
            spec,
            seed,
            tier,
            data,
            work_dir,
            cached,
            teacher,
            keep_dir=folder,
            teacher_name=teacher_keep.name,
            teacher_top1=teacher_record["top1"],
        )
        write_record(runs_dir, record, tier, dataset_name)
        write_report(results_dir, tier, readme)
