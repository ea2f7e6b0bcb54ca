"""benchmarks/accuracy.py (benchmarks/cifar100): replayed views, warm-up scaling, resumable
records, the kept Hub-ready models, their transfer, the reports and publishing the set."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoModelForImageClassification

from benchmarks.cifar100.cli import main
from benchmarks.cifar100.config import (
    MCLD_ABLATIONS,
    METHODS,
    TIERS,
    VIEW_SEED,
    StudentSpec,
    planned_runs,
)
from benchmarks.cifar100.data import load_tensor_data, model_inputs
from benchmarks.cifar100.report import (
    README_END,
    README_START,
    compare_records,
    paired_deltas,
    write_report,
)
from benchmarks.cifar100.training import distillation_arguments
from hf_kd.data.device_views import apply_view_params, replayed_view_params
from hf_kd.logit_cache import load_teacher_logit_cache
from hf_kd.losses import preset
from hf_kd.model_card import read_student_card
from hf_kd.models import load_classifier
from hf_kd.transfer import read_transfer_results
from tests.hub_client import (
    assert_same_logits,
    push_and_pull_in_fresh_process,
    run_in_fresh_process,
)

pytest_plugins = ("tests.hub_server",)  # the loopback_hub fixture
REPO_ROOT = Path(__file__).resolve().parents[1]


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
    plan = [(spec.name, seed) for spec, seed in planned_runs(tier, ablations=True)]
    method_runs = [(spec.name, seed) for seed in tier.seeds for spec in METHODS]
    ablation_runs = [(spec.name, seed) for seed in tier.seeds for spec in MCLD_ABLATIONS]
    assert plan == method_runs + ablation_runs
    # the default plan is the methods only: the kept, transferred and published set
    assert [(spec.name, seed) for spec, seed in planned_runs(tier)] == method_runs
    assert len(set(plan)) == (len(METHODS) + len(MCLD_ABLATIONS)) * len(tier.seeds)


def test_an_ablation_is_compared_with_the_default_seed_by_seed() -> None:
    default = {"seeds": [0, 1, 2], "top1": [40.0, 41.0, 39.0]}
    two_seeds = {"seeds": [0, 2], "top1": [41.0, 40.5], "top1_mean": 40.75}
    assert paired_deltas(two_seeds, default) == pytest.approx([1.0, 1.5])
    assert paired_deltas({"seeds": [3], "top1": [1.0], "top1_mean": 1.0}, default) is None
    assert paired_deltas(two_seeds, None) is None


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


def _save_tiny_cifar(path: Path) -> Path:
    rng = np.random.default_rng(0)
    DatasetDict({"train": _tiny_split(48, rng), "test": _tiny_split(16, rng)}).save_to_disk(
        str(path)
    )
    return path


@pytest.fixture
def tiny_cifar(tmp_path: Path) -> Path:
    return _save_tiny_cifar(tmp_path / "tiny_cifar")


def _save_tiny_transfer(path: Path) -> Path:
    """A transfer dataset in the shared data's layout (parquet files under ``data/``): 64x64
    images of 5 colour classes, as Tiny-ImageNet's are 64x64."""
    rng = np.random.default_rng(1)
    names = ("red", "green", "blue", "grey", "dark")
    for split, count in (("train", 40), ("test", 20)):
        images, labels = [], []
        for index in range(count):
            label = index % len(names)
            pixels = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
            if label < 3:
                pixels[..., label] += 180
            elif label == 3:
                pixels += 120
            images.append(Image.fromarray(pixels))
            labels.append(label)
        features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
        dataset = Dataset.from_dict({"image": images, "label": labels}, features=features)
        (path / "data").mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(path / "data" / f"{split}-00000-of-00001.parquet"))
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


KEPT_STUDENTS = ("ce", "kd", "mcld", "mcld_no_sample")


@dataclass(frozen=True)
class TinyRun:
    """A finished tiny run of the CPU tier with its transfer stage, and how to rerun it."""

    root: Path
    dataset: Path
    transfer_dataset: Path
    argv: list[str]

    @property
    def runs(self) -> Path:
        return self.root / "results" / "accuracy_runs"

    def records(self) -> dict[str, dict]:
        return {path.stem: json.loads(path.read_text()) for path in self.runs.glob("*.json")}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    root = tmp_path_factory.mktemp("tiny_run")
    dataset = _save_tiny_cifar(root / "tiny_cifar")
    transfer_dataset = _save_tiny_transfer(root / "tiny_transfer")
    argv = _benchmark_argv(
        dataset,
        root,
        "--only", *KEPT_STUDENTS,
        "--transfer", "--transfer_datasets", str(transfer_dataset), "--probe_epochs", "3",
    )  # fmt: skip
    threads = torch.get_num_threads()
    try:
        main(argv)
    finally:
        torch.set_num_threads(threads)
    return TinyRun(root, dataset, transfer_dataset, argv)


@pytest.mark.slow
def test_cpu_tier_trains_the_teacher_caches_its_views_and_distils(tiny_run: TinyRun) -> None:
    tmp_path = tiny_run.root
    tiny_cifar = tiny_run.dataset
    records = tiny_run.records()
    assert sorted(records) == [
        "ce_seed0",
        "kd_seed0",
        "mcld_no_sample_seed0",
        "mcld_seed0",
        "teacher",
    ]
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


@pytest.mark.slow
def test_every_model_is_kept_hub_ready_with_its_card(tiny_run: TinyRun) -> None:
    records = tiny_run.records()
    data = load_tensor_data(str(tiny_run.dataset), 16, tiny_run.root / "data_cache")
    pixel_values = model_inputs(data.test_images, TIERS["cpu"])
    names = set()
    for run, record in records.items():
        folder = Path(record["model_dir"])
        names.add(folder.name)
        architecture = record["architecture"]
        expected_name = "teacher" if run == "teacher" else run.replace("_seed", "-seed")
        assert folder.name == f"cifar100-16px-{architecture}-{expected_name}"
        # both libraries load the same weights; the saved model scores the recorded top-1
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        timm_model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        with torch.no_grad():
            logits = model(pixel_values=pixel_values).logits
            torch.testing.assert_close(timm_model(pixel_values), logits, rtol=0, atol=1e-5)
        top1 = (logits.argmax(-1) == data.test_labels).float().mean().item()
        assert 100 * top1 == pytest.approx(record["top1"])
        card = read_student_card(folder)
        assert card.model_name == folder.name
        assert card.training.seed == record.get("seed", 0)
        assert card.eval_split == "test" and card.eval_accuracy == pytest.approx(top1)
        assert card.training_curves and (folder / card.training_curves).is_file()
        assert card.training_eval_split == "test"  # evaluated on test after every epoch
        assert "the test split." in (folder / "README.md").read_text()
        metadata = ModelCard.load(folder / "README.md").data
        cifar = [
            result for result in metadata.eval_results if result.task_name == "Image Classification"
        ]
        assert [result.metric_value for result in cifar] == [round(top1, 4)]
        assert metadata.datasets == ["uoft-cs/cifar100"]
        if run == "teacher":
            continue
        assert card.training.hyperparameters["learning_rate"] == TIERS["cpu"].learning_rate
        assert card.method == record["objective"]["method"]
        assert card.kd_weight == record["objective"]["kd_weight"]
        teacher_folder = Path(records["teacher"]["model_dir"])
        if card.kd_weight:
            assert card.teacher.name == teacher_folder.name
            assert card.teacher_eval_accuracy == pytest.approx(records["teacher"]["top1"] / 100)
    assert len(names) == len(records)


@pytest.mark.slow
def test_transfer_stage_probes_every_kept_model_and_adds_it_to_the_card(tiny_run: TinyRun) -> None:
    results = tiny_run.root / "results"
    transfer = json.loads((results / "transfer.json").read_text())["records"]
    # the teacher, CE only and the methods; not the ablation
    assert sorted(record["method"] for record in transfer) == ["ce", "kd", "mcld", "teacher"]
    records = tiny_run.records()
    for record in transfer:
        assert record["dataset"] == "tiny_transfer" and record["seed"] == 0
        assert 0.0 <= record["top1_accuracy"] <= 1.0
        assert (record["num_classes"], record["num_train_samples"]) == (5, 40)
        assert record["num_eval_samples"] == 20 and record["image_size"] == [16, 16]
        folder = Path(records[record["run"]]["model_dir"])
        kept = read_transfer_results(folder)
        assert [result.top1_accuracy for result in kept] == [record["top1_accuracy"]]
        metadata = ModelCard.load(folder / "README.md").data
        probes = [r for r in metadata.eval_results if r.task_name == "Linear-probe transfer"]
        assert [r.metric_value for r in probes] == [round(record["top1_accuracy"], 4)]
    summary = json.loads((results / "transfer_summary.json").read_text())["tiny_transfer"]
    kd, mcld = summary["kd"], summary["mcld"]
    assert mcld["delta_vs_kd"] == pytest.approx([mcld["top1"][0] - kd["top1"][0]])
    assert summary["ce"]["delta_vs_ce"] == [0.0]
    section = (tiny_run.root / "RESULTS.md").read_text()
    assert "## Transfer of the CIFAR-100 students (linear probe, CPU budget)" in section
    assert (results / "transfer.png").stat().st_size > 0


@pytest.mark.slow
def test_a_rerun_trains_and_probes_nothing_already_finished(tiny_run: TinyRun) -> None:
    def written() -> dict[str, int]:
        paths = [
            *tiny_run.runs.glob("*.json"),
            *(tiny_run.root / "results" / "transfer_runs").glob("*.json"),
            *(tiny_run.root / "work" / "models").glob("*/model.safetensors"),
        ]
        return {str(path): path.stat().st_mtime_ns for path in paths}

    def rerun() -> None:
        threads = torch.get_num_threads()
        try:
            main(tiny_run.argv)
        finally:
            torch.set_num_threads(threads)

    before = written()
    assert len(before) == 5 + 4 + 5
    rerun()
    assert written() == before

    # A teacher trained and recorded but not kept (an older benchmark's run, or a lost
    # folder) is kept from the finished run without training again, then probed again.
    teacher_record = tiny_run.runs / "teacher.json"
    kept_teacher = Path(json.loads(teacher_record.read_text())["model_dir"])
    record = json.loads(teacher_record.read_text())
    del record["model_dir"]
    teacher_record.write_text(json.dumps(record))
    shutil.rmtree(kept_teacher)
    trained = tiny_run.root / "work" / "teacher" / "model.safetensors"
    trained_at = trained.stat().st_mtime_ns
    rerun()
    assert trained.stat().st_mtime_ns == trained_at
    assert json.loads(teacher_record.read_text())["model_dir"] == str(kept_teacher)
    assert read_student_card(kept_teacher).training.steps > 0
    [result] = read_transfer_results(kept_teacher)
    assert result.dataset == str(tiny_run.transfer_dataset)


@pytest.mark.slow
def test_the_kept_set_is_published_and_reloads_from_the_hub(
    tiny_run: TinyRun, loopback_hub, tmp_path: Path
) -> None:
    """One command pushes the set; each repo reloads with transformers, timm and pipeline."""
    command = [
        sys.executable, str(REPO_ROOT / "benchmarks" / "accuracy.py"), "--report",
        "--results_dir", str(tiny_run.root / "results"),
        "--push_to_hub", "--hub_organization", loopback_hub.user,
    ]  # fmt: skip
    run_in_fresh_process(loopback_hub, command, tmp_path / "home")

    records = tiny_run.records()
    data = load_tensor_data(str(tiny_run.dataset), 16, tiny_run.root / "data_cache")
    pixel_values = model_inputs(data.test_images[:6], TIERS["cpu"])
    images = []
    for index in range(3):
        path = tmp_path / f"image{index}.png"
        Image.fromarray(data.test_images[index].permute(1, 2, 0).numpy()).save(path)
        images.append(str(path))
    jobs = [
        {
            "folder": record["model_dir"],
            "repo_id": f"{loopback_hub.user}/{Path(record['model_dir']).name}",
            "timm": True,
            "private": False,
            "push": False,
            "images": images,
        }
        for record in records.values()
    ]
    pulled = push_and_pull_in_fresh_process(loopback_hub, jobs, pixel_values, tmp_path / "pull")
    teacher_repo = f"{loopback_hub.user}/{Path(records['teacher']['model_dir']).name}"
    for job, (logits, report) in zip(jobs, pulled, strict=True):
        local = AutoModelForImageClassification.from_pretrained(job["folder"]).eval()
        with torch.no_grad():
            expected = local(pixel_values=pixel_values).logits
        assert_same_logits(logits["transformers"], expected)
        assert_same_logits(logits["timm"], expected)
        torch.testing.assert_close(
            logits["pipeline_probs"], logits["processor_probs"], rtol=0, atol=1e-5
        )
        assert {"model.safetensors", "config.json", "README.md"} <= set(report["files"])
        assert "transfer_results.json" in report["files"] or "mcld_no_sample" in job["repo_id"]
        card = report["card_text"]
        assert f"hf-hub:{job['repo_id']}" in card
        if job["repo_id"] != teacher_repo and "-ce-" not in job["repo_id"]:
            assert teacher_repo in card


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
