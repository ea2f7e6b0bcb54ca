"""benchmarks/deit_token.py: the students it compares, their arguments, and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.cifar100.training import build_optimizer, distillation_arguments
from benchmarks.deit_token import (
    README_END,
    README_START,
    REPORT_SECTION,
    STUDENTS,
    TIER,
    planned_runs,
    write_report,
)
from hf_kd.models import load_classifier

# made-up top-1 per student and seed (each head's too for the token students)
TOP1 = {
    "ce": [10.0, 11.0, 12.0],
    "kd": [11.0, 12.0, 13.5],
    "mcld": [14.0, 14.5, 15.0],
    "token_hard": [10.5, 11.0, 12.5],
    "token_kd": [11.5, 12.0, 13.0],
    "token_mcld": [15.5, 16.0, 17.5],
}


def test_each_student_trains_the_vit_and_the_head_it_names(tmp_path: Path) -> None:
    by_name = {student.spec.name: student for student in STUDENTS}
    # what each student's distillation loss is (the CE-only student's has weight 0)
    methods = {
        "ce": "kd",
        "kd": "kd",
        "mcld": "mcld",
        "token_hard": "hard",
        "token_kd": "kd",
        "token_mcld": "mcld",
    }
    for name, student in by_name.items():
        args = distillation_arguments(student.spec, student.tier, 0, tmp_path)
        objective = args.resolve_objective(distillation_token=student.distillation_token)
        assert student.distillation_token == name.startswith("token_")
        assert objective.method == methods[name]
        assert (objective.kd_weight == 0) == (name == "ce")
    plain = load_classifier(
        TIER.student_architecture, num_labels=100, pretrained=False,
        model_kwargs=TIER.student_model_kwargs,
    )  # fmt: skip
    token = load_classifier(
        by_name["token_mcld"].tier.student_architecture, num_labels=100, pretrained=False,
        model_kwargs=TIER.student_model_kwargs,
    )  # fmt: skip
    # the same ViT but for the distillation token and its head
    extra = sum(p.numel() for p in token.parameters()) - sum(p.numel() for p in plain.parameters())
    embed_dim = TIER.student_model_kwargs["embed_dim"]
    assert extra == embed_dim + embed_dim + (embed_dim * 100 + 100)  # token, position, head
    optimizer, _ = build_optimizer(plain, TIER, TIER.student_epochs, steps_per_epoch=10)
    assert isinstance(optimizer, torch.optim.AdamW)


def test_runs_go_seed_by_seed() -> None:
    plan = [(student.spec.name, seed) for student, seed in planned_runs((0, 1))]
    assert plan[:6] == [(student.spec.name, 0) for student in STUDENTS]
    assert {seed for _, seed in plan[6:]} == {1}


def write_records(runs_dir: Path) -> None:
    runs_dir.mkdir(parents=True)
    for student in STUDENTS:
        name = student.spec.name
        for seed, top1 in enumerate(TOP1[name]):
            record = {
                "run": f"{name}_seed{seed}",
                "name": name,
                "seed": seed,
                "architecture": student.tier.student_architecture,
                "parameters": 1,
                "top1": top1,
                "wall_time_s": 100.0,
                "epochs": 1,
                "objective": {"method": student.spec.method, "ce_weight": 1.0, "kd_weight": 1.0},
            }
            if student.distillation_token:
                record.update(cls_top1=top1 - 1, distillation_top1=top1 - 2)
            (runs_dir / f"{name}_seed{seed}.json").write_text(json.dumps(record))


def test_report_gives_means_heads_and_paired_deltas(tmp_path: Path) -> None:
    results_dir = tmp_path / "results"
    write_records(results_dir / "deit_token_runs")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\nold table\n{README_END}\nend\n")
    summary = write_report(results_dir, readme)

    assert summary["pending"] == []
    token_mcld = summary["students"]["token_mcld"]
    assert token_mcld["top1_mean"] == pytest.approx(49 / 3)
    assert token_mcld["cls_top1_mean"] == pytest.approx(49 / 3 - 1)
    assert "cls_top1" not in summary["students"]["mcld"]
    assert summary["paired_deltas"]["token_mcld - mcld"] == pytest.approx([1.5, 1.5, 2.5])
    assert summary["paired_deltas"]["token_hard - token_kd"] == pytest.approx([-1.0, -1.0, -0.5])
    assert json.loads((results_dir / "deit_token.json").read_text()) == json.loads(
        json.dumps(summary)
    )
    section = (tmp_path / "RESULTS.md").read_text()
    assert REPORT_SECTION in section
    assert "| token_mcld - mcld | +1.83 ± 0.58 | +1.50, +1.50, +2.50 |" in section
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("end\n")
    assert "| `token_mcld`: distillation token, MCLD | 16.33 ± 1.04 (n=3) |" in text
