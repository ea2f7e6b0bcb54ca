"""Publish the kept set: the teacher and every kept student, each to its own Hub repo
``<organization>/<folder name>`` (dataset, input size, architecture, method and seed, e.g.
``cifar100-16px-cifar_resnet8-mcld-seed0``), with :func:`hf_kd.hub.push_students_to_hub`.

Before the push each student's card names the teacher by its published repo id."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from huggingface_hub import CommitInfo

from benchmarks.cifar100.config import TierConfig
from benchmarks.cifar100.records import load_records
from hf_kd.hub import push_students_to_hub
from hf_kd.model_card import read_student_card, write_model_card

logger = logging.getLogger("benchmarks.cifar100")


def kept_folders(results_dir: Path, tier: TierConfig) -> list[Path]:
    """The kept model folders of the tier's records: the teacher first."""
    records = load_records(results_dir / f"{tier.stem}_runs")
    folders = [Path(record["model_dir"]) for record in records.values() if record.get("model_dir")]
    missing = [str(folder) for folder in folders if not (folder / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"kept folders recorded but missing: {missing}; rerun the accuracy stage to keep "
            "them again"
        )
    teacher = records.get("teacher", {}).get("model_dir")
    return sorted(folders, key=lambda folder: str(folder) != teacher)


def name_published_teacher(folders: list[Path], teacher: Path, organization: str) -> None:
    """Re-render each student card so that it names the teacher's published repo."""
    teacher_repo = f"{organization}/{teacher.name}"
    for folder in folders:
        card = read_student_card(folder)
        if card is None or card.teacher is None or card.teacher.name == teacher_repo:
            continue
        if card.teacher.name != teacher.name:
            continue
        teacher_summary = dataclasses.replace(card.teacher, name=teacher_repo)
        write_model_card(dataclasses.replace(card, teacher=teacher_summary), folder)


def publish(
    results_dir: Path,
    tier: TierConfig,
    organization: str,
    *,
    token: str | None = None,
    private: bool | None = None,
) -> dict[str, CommitInfo]:
    """Push the teacher and every kept student to ``organization``; ``{repo_id: commit}``."""
    folders = kept_folders(results_dir, tier)
    if not folders:
        raise FileNotFoundError(f"no kept model recorded in {results_dir}: run the benchmark")
    name_published_teacher(folders[1:], folders[0], organization)
    commits = push_students_to_hub(
        folders,
        organization,
        token=token,
        private=private,
        commit_message="Upload from the hf-kd CIFAR-100 benchmark",
    )
    for repo_id, commit in commits.items():
        logger.info("published %s: %s", repo_id, commit)
    return commits
