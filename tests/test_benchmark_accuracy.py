"""benchmarks/accuracy.py: replayed views, warm-up scaling, resumable records and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.accuracy import (
    MCLD_ABLATIONS,
    METHODS,
    README_END,
    README_START,
    TIERS,
    AugmentedImages,
    StudentSpec,
    ablation_delta,
    distillation_arguments,
    draw_view_params,
    planned_runs,
    write_report,
)


def _images(count: int = 6, size: int = 4) -> torch.Tensor:
    return torch.arange(count * 3 * size * size, dtype=torch.int64).reshape(count, 3, size, size)


def test_a_replayed_view_carries_the_teacher_logits_of_exactly_that_view() -> None:
    images, labels = _images().to(torch.uint8), torch.arange(6)
    views = draw_view_params(len(labels), num_views=3, seed=0)
    # Each view's "teacher logits" encode its own pixels, so a mismatch would show.
    cached = torch.stack(
        [
            torch.stack(
                [
                    AugmentedImages(images, labels, views, fixed_view=view)[index]["pixel_values"]
                    .float()
                    .sum()
                    .expand(2)
                    for view in range(3)
                ]
            )
            for index in range(6)
        ]
    )
    replay = AugmentedImages(images, labels, views, teacher_logits=cached)
    torch.manual_seed(0)
    for index in range(6):
        for _ in range(4):
            item = replay[index]
            assert item["teacher_logits"][0] == item["pixel_values"].float().sum()
            assert item["labels"] == labels[index]


def test_pad_crop_and_flip_match_a_hand_made_view() -> None:
    images, labels = _images(1).to(torch.uint8), torch.zeros(1, dtype=torch.int64)
    views = torch.tensor([[[0, 4, 1]]])  # top 0, left 4 (2 pixels right of centre), flipped
    item = AugmentedImages(images, labels, views, fixed_view=0)[0]["pixel_values"]
    padded = torch.nn.functional.pad(images[0], (2, 2, 2, 2))
    assert torch.equal(item, padded[:, 0:4, 4:8].flip(-1))


def test_warmups_are_scaled_to_the_schedule_for_every_method(tmp_path: Path) -> None:
    tier = TIERS["cpu"]
    dkd = distillation_arguments(StudentSpec("dkd", "dkd"), tier, 0, tmp_path).resolve_objective()
    assert dkd.warmup_epochs == pytest.approx(20 * tier.student_epochs / 240)
    mcld = distillation_arguments(StudentSpec("mcld", "mcld"), tier, 0, tmp_path)
    assert mcld.resolve_objective().loss_kwargs["category_warmup_epochs"] == pytest.approx(
        20 * tier.student_epochs / 240
    )
    ce_only = distillation_arguments(METHODS[0], tier, 0, tmp_path).resolve_objective()
    assert (ce_only.ce_weight, ce_only.kd_weight) == (1.0, 0.0)


def test_report_aggregates_records_and_lists_pending_runs(tmp_path: Path) -> None:
    results = tmp_path / "results"
    runs = results / "accuracy_runs"
    runs.mkdir(parents=True)
    tier = TIERS["cpu"]
    teacher = {"run": "teacher", "architecture": "t", "parameters": 10, "top1": 50.0}
    (runs / "teacher.json").write_text(json.dumps({**teacher, "wall_time_s": 60.0}))
    objective = {"loss_kwargs": {"tau": 0.2}}
    for seed, top1 in ((0, 30.0), (1, 32.0)):
        record = {"name": "kd", "method": "kd", "seed": seed, "top1": top1}
        record.update(wall_time_s=100.0, objective=objective)
        (runs / f"kd_seed{seed}.json").write_text(json.dumps(record))
    ablation = {"name": "mcld_tau_0.2", "method": "mcld", "seed": 0, "top1": 29.0}
    ablation.update(wall_time_s=90.0, objective=objective)
    (runs / "mcld_tau_0.2_seed0.json").write_text(json.dumps(ablation))

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{README_START}\nold table\n{README_END}\nafter\n")

    summary = write_report(results, tier, readme)

    assert summary["methods"]["kd"]["top1_mean"] == pytest.approx(31.0)
    assert summary["methods"]["kd"]["top1_std"] == pytest.approx(2**0.5)
    assert "kd_seed1" not in summary["pending"] and "mcld_seed0" in summary["pending"]
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "31.00 ± 1.41 (n=2)" in markdown
    assert "not comparable with the papers' 240-epoch numbers" in markdown
    assert (results / "accuracy.png").stat().st_size > 0
    readme_text = readme.read_text()
    assert "old table" not in readme_text and readme_text.endswith(f"{README_END}\nafter\n")
    assert "| kd | 31.00 ± 1.41 (n=2) | [0, 1] | 100 |" in readme_text
    assert "| teacher `t` | 50.00 | [0] | 60 |" in readme_text
    # A second report replaces the section instead of appending another one.
    write_report(results, tier)
    assert (tmp_path / "RESULTS.md").read_text().count(TIERS["cpu"].report_section) == 1
    # Every file went through a rename: no temporary file is left behind.
    assert not [path.name for path in tmp_path.rglob("*partial*")]


def test_the_plan_runs_every_method_at_every_seed_before_the_ablations() -> None:
    tier = TIERS["cpu"]
    plan = [(spec.name, seed) for spec, seed in planned_runs(tier)]
    method_runs = [(spec.name, seed) for seed in tier.seeds for spec in METHODS]
    ablation_runs = [(spec.name, tier.seeds[0]) for spec in MCLD_ABLATIONS]
    assert plan == method_runs + ablation_runs
    assert len(set(plan)) == len(METHODS) * len(tier.seeds) + len(MCLD_ABLATIONS)


def test_an_ablation_is_compared_with_the_default_on_the_same_seeds() -> None:
    default = {"seeds": [0, 1, 2], "top1": [40.0, 41.0, 39.0]}
    two_seeds = {"seeds": [0, 2], "top1": [41.0, 40.5], "top1_mean": 40.75}
    assert ablation_delta(two_seeds, default) == pytest.approx(40.75 - 39.5)
    assert ablation_delta({"seeds": [3], "top1": [1.0], "top1_mean": 1.0}, default) is None
    assert ablation_delta(two_seeds, None) is None
