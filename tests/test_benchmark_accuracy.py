"""benchmarks/accuracy.py: replayed views, warm-up scaling, resumable records and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from PIL import Image

from benchmarks.accuracy import (
    MCLD_ABLATIONS,
    METHODS,
    README_END,
    README_START,
    TIERS,
    VIEW_SEED,
    StudentSpec,
    ablation_deltas,
    compare_records,
    distillation_arguments,
    load_tensor_data,
    main,
    model_inputs,
    planned_runs,
    write_report,
)
from hf_kd.data.device_views import apply_view_params, replayed_view_params
from hf_kd.logit_cache import load_teacher_logit_cache
from hf_kd.losses import preset
from hf_kd.models import load_classifier


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
    ablation_runs = [(spec.name, seed) for seed in tier.seeds for spec in MCLD_ABLATIONS]
    assert plan == method_runs + ablation_runs
    assert len(set(plan)) == (len(METHODS) + len(MCLD_ABLATIONS)) * len(tier.seeds)


def test_an_ablation_is_compared_with_the_default_seed_by_seed() -> None:
    default = {"seeds": [0, 1, 2], "top1": [40.0, 41.0, 39.0]}
    two_seeds = {"seeds": [0, 2], "top1": [41.0, 40.5], "top1_mean": 40.75}
    assert ablation_deltas(two_seeds, default) == pytest.approx([1.0, 1.5])
    assert ablation_deltas({"seeds": [3], "top1": [1.0], "top1_mean": 1.0}, default) is None
    assert ablation_deltas(two_seeds, None) is None


def test_records_of_two_environments_are_compared_run_by_run() -> None:
    here = {"kd_seed0": {"top1": 36.0, "versions": {"torch": "a"}}, "ce_seed0": {"top1": 33.0}}
    other = {"kd_seed0": {"top1": 35.5}, "ce_seed0": {"top1": 33.0}, "rld_seed0": {"top1": 1.0}}
    table = compare_records(here, other)
    assert "| kd_seed0 | 36.00 | 35.50 | +0.50 |" in table
    assert "| ce_seed0 | 33.00 | 33.00 | +0.00 |" in table and "rld_seed0" not in table
    assert "2 runs in both; identical: 1; mean |difference| 0.25, largest 0.50." in table
    assert 'Versions here: {"torch": "a"}.' in table and "Versions other: not recorded." in table


def test_the_report_gives_paired_ablation_deltas(tmp_path: Path) -> None:
    results = tmp_path / "results"
    runs = results / "accuracy_runs"
    runs.mkdir(parents=True)
    objective = {"loss_kwargs": {}}
    accuracies = {"mcld": (40.0, 41.0, 39.0), "mcld_tau_0.2": (40.5, 40.0, 39.0)}
    for name, per_seed in accuracies.items():
        for seed, top1 in enumerate(per_seed):
            record = {"name": name, "method": "mcld", "seed": seed, "top1": top1}
            record.update(wall_time_s=1.0, objective=objective)
            (runs / f"{name}_seed{seed}.json").write_text(json.dumps(record))

    summary = write_report(results, TIERS["cpu"])

    deltas = summary["mcld_ablations"]["mcld_tau_0.2"]["delta_vs_default"]
    assert deltas == pytest.approx([0.5, -1.0, 0.0])
    # mean -0.17, sample std of (0.5, -1.0, 0.0) = 0.76
    row = (
        '| mcld_tau_0.2 | `{"tau": 0.2}` | 39.83 ± 0.76 (n=3) | -0.17 ± 0.76 '
        "| +0.50, -1.00, +0.00 |"
    )
    assert row in (tmp_path / "RESULTS.md").read_text()


# ---- the whole benchmark on a tiny CIFAR-shaped dataset ----

TINY_CLASSES = ("red", "green", "blue", "grey")


def _tiny_split(count: int, rng: np.random.Generator) -> Dataset:
    """32x32 RGB images whose class is their dominant colour, with noise."""
    images, labels = [], []
    for index in range(count):
        label = index % len(TINY_CLASSES)
        pixels = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
        if label < 3:
            pixels[..., label] += 150
        else:
            pixels += 90
        images.append(Image.fromarray(pixels))
        labels.append(label)
    features = Features({"img": ImageFeature(), "fine_label": ClassLabel(names=TINY_CLASSES)})
    return Dataset.from_dict({"img": images, "fine_label": labels}, features=features)


@pytest.fixture
def tiny_cifar(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny_cifar"
    DatasetDict({"train": _tiny_split(48, rng), "test": _tiny_split(16, rng)}).save_to_disk(
        str(path)
    )
    return path


@pytest.fixture
def keep_torch_threads():
    """``main`` sets torch's thread count for the whole process: restore it afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _benchmark_argv(dataset: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--dataset_name", str(dataset),
        "--work_dir", str(tmp_path / "work"),
        "--results_dir", str(tmp_path / "results"),
        "--data_cache_dir", str(tmp_path / "data_cache"),
        "--teacher_epochs", "1", "--student_epochs", "1", "--seeds", "0",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.usefixtures("keep_torch_threads")
def test_cpu_tier_trains_the_teacher_caches_its_views_distils_and_resumes(
    tiny_cifar: Path, tmp_path: Path
) -> None:
    argv = _benchmark_argv(tiny_cifar, tmp_path, "--only", "ce", "mcld", "mcld_no_sample")
    main(argv)

    runs = tmp_path / "results" / "accuracy_runs"
    records = {path.stem: json.loads(path.read_text()) for path in runs.glob("*.json")}
    assert sorted(records) == ["ce_seed0", "mcld_no_sample_seed0", "mcld_seed0", "teacher"]
    assert records["teacher"]["architecture"] == TIERS["cpu"].teacher_architecture
    assert records["ce_seed0"]["objective"]["kd_weight"] == 0.0
    mcld_kwargs = records["mcld_seed0"]["objective"]["loss_kwargs"]
    assert mcld_kwargs["category_warmup_epochs"] == pytest.approx(20 / 240)
    assert records["mcld_no_sample_seed0"]["objective"]["loss_kwargs"]["sample_weight"] == 0.0
    for record in records.values():
        assert 0.0 <= record["top1"] <= 100.0 and record["dataset"] == "tiny_cifar"

    # The library's cache holds the trained teacher's logits of exactly the replayed 16x16
    # views, made on the decode-once path from the images decoded once into data_cache.
    work = tmp_path / "work"
    cache = load_teacher_logit_cache(work / "teacher_logits_4views")
    assert (cache.num_rows, cache.num_views, cache.data_path) == (48, 4, "decoded")
    assert cache.views.view_size == (16, 16) and cache.views.seed == VIEW_SEED
    tier = TIERS["cpu"]
    data = load_tensor_data(str(tiny_cifar), 16, tmp_path / "data_cache")
    assert data.train_images.shape == (48, 3, 16, 16) and data.train_images.dtype == torch.uint8
    row = int(data.train.row_index[5])
    params = replayed_view_params(cache.views, "default", [row], [2])
    view = apply_view_params(data.train_images[5:6], params)
    teacher = load_classifier(str(work / "teacher")).eval()
    with torch.no_grad():
        logits = teacher(pixel_values=model_inputs(view, tier)).logits[0]
    cached = torch.from_numpy(cache.teacher_logits([row])[0, 2])
    torch.testing.assert_close(cached, logits, atol=1e-2, rtol=1e-2)

    summary = json.loads((tmp_path / "results" / "accuracy.json").read_text())
    no_sample = summary["mcld_ablations"]["mcld_no_sample"]
    mcld_top1 = records["mcld_seed0"]["top1"]
    assert no_sample["delta_vs_default"] == pytest.approx(
        [records["mcld_no_sample_seed0"]["top1"] - mcld_top1]
    )
    assert "## Accuracy on CIFAR-100 (CPU budget)" in (tmp_path / "RESULTS.md").read_text()

    # A second run finds every requested run recorded and trains nothing.
    written = {path.name: path.stat().st_mtime_ns for path in runs.glob("*.json")}
    main(argv)
    assert {path.name: path.stat().st_mtime_ns for path in runs.glob("*.json")} == written


@pytest.mark.slow
@pytest.mark.usefixtures("keep_torch_threads")
def test_full_tier_distils_from_the_live_teacher_at_32px(tiny_cifar: Path, tmp_path: Path) -> None:
    main(_benchmark_argv(tiny_cifar, tmp_path, "--full", "--only", "kd"))

    runs = tmp_path / "results" / "accuracy_full_runs"
    teacher = json.loads((runs / "teacher.json").read_text())
    student = json.loads((runs / "kd_seed0.json").read_text())
    assert teacher["architecture"] == "cifar_resnet32x4"
    assert student["architecture"] == "cifar_resnet8x4"
    assert (student["tier"]["image_size"], student["tier"]["num_views"]) == (32, 0)
    kd_preset = preset("kd", "cifar100")
    objective = student["objective"]
    assert (objective["ce_weight"], objective["kd_weight"]) == (
        kd_preset.ce_weight,
        kd_preset.kd_weight,
    )
    assert not list((tmp_path / "work").glob("teacher_logits_*"))  # no cache: live teacher
    assert "## Accuracy on CIFAR-100 (full recipe)" in (tmp_path / "RESULTS.md").read_text()
    assert (tmp_path / "results" / "accuracy_full.png").stat().st_size > 0
