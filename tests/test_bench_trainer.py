"""benchmarks/bench_trainer.py: the targets' arithmetic, the RESULTS.md update, a real run."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_trainer

HEADING = bench_trainer.RESULTS_HEADING


def test_time_and_memory_targets():
    results = {
        "plain_ms": 100.0,
        "teacher_fwd_ms": 50.0,
        "live_ms": 157.5,  # exactly 1.05 x (100 + 50)
        "cached_ms": 105.1,  # just above 1.05 x 100
        "plain_peak_mb": 100.0,
        "teacher_weights_mb": 40.0,
        "live_peak_mb": 154.5,  # above 1.10 x (100 + 40) = 154
    }
    assert bench_trainer.time_targets(results, "ms") == {
        "live_ms_limit": 157.5,
        "live_ms_ratio": 1.05,
        "live_ms_met": True,
        "cached_ms_limit": 105.0,
        "cached_ms_ratio": 1.051,
        "cached_ms_met": False,
    }
    assert bench_trainer.memory_target(results) == {
        "live_peak_mb_limit": 154.0,
        "live_peak_mb_met": False,
    }


def test_results_section_is_added_or_replaced_keeping_the_others():
    section = f"{HEADING}\n\nnew table\n"
    assert bench_trainer.replace_section("", HEADING, section) == section
    assert bench_trainer.replace_section("# Results\n", HEADING, section) == (
        f"# Results\n\n{HEADING}\n\nnew table\n"
    )
    document = f"# Results\n\n## Accuracy\n\nkept\n\n{HEADING}\n\nold table\n\n## GPU\n\nkept too\n"
    assert bench_trainer.replace_section(document, HEADING, section) == (
        f"# Results\n\n## Accuracy\n\nkept\n\n{HEADING}\n\nnew table\n\n## GPU\n\nkept too\n"
    )


@pytest.mark.slow
def test_a_small_run_writes_both_result_files(tmp_path):
    json_path, markdown_path = tmp_path / "trainer.json", tmp_path / "RESULTS.md"
    markdown_path.write_text("# Benchmark results\n\n## Other\n\nkept\n")
    bench_trainer.main(
        [
            "--rounds=1",
            "--steps=2",
            "--warmup=1",
            "--batch-size=8",
            f"--json={json_path}",
            f"--markdown={markdown_path}",
        ]
    )
    results = json.loads(json_path.read_text())
    for name in ("plain", "live", "cached", "teacher_fwd"):
        assert results[f"{name}_ms"] > 0 and results[f"{name}_cpu_ms"] > 0
        assert results[f"{name}_samples"] == 2
        assert results[f"{name}_peak_mb"] > 0
        assert set(results[f"{name}_phases_cpu_ms"]) == set(bench_trainer.PHASES)
    # Each configuration's step holds the forwards it should, and only those.
    phases = {name: results[f"{name}_phases_cpu_ms"] for name in ("plain", "live", "cached")}
    assert phases["live"]["teacher forward"] > 0
    assert phases["plain"]["teacher forward"] == phases["cached"]["teacher forward"] == 0
    assert all(phases[name]["student forward"] > 0 for name in phases)
    teacher_alone = results["teacher_fwd_phases_cpu_ms"]
    assert teacher_alone["teacher forward"] == results["teacher_fwd_cpu_ms"]
    # resnet18's 11.2 M float32 parameters and its BatchNorm buffers, 10 classes
    assert results["teacher_weights_mb"] == pytest.approx(42.7, abs=0.1)
    # The live run holds the teacher's weights on top of what the cached run holds.
    assert results["live_peak_mb"] > results["cached_peak_mb"] + 0.8 * 42.7
    # The distillation steps add only the loss's small ops: no second student forward.
    model_operators = {"aten::mm", "aten::addmm", "aten::convolution", "aten::linear"}
    for name in ("live", "cached"):
        added = {entry["operator"] for entry in results[f"{name}_added_operators"]}
        assert "aten::_log_softmax" in added
        assert not added & model_operators, name
    # timm's own distillation step, timed in the same rounds, against the same floor
    assert results["timm_task_samples"] == 2 and results["timm_task_cpu_ms"] > 0
    timm_phases = results["timm_task_phases_cpu_ms"]
    assert timm_phases["student forward"] > 0 and timm_phases["teacher forward"] > 0
    floor = results["plain_ms"] + results["teacher_fwd_ms"]
    assert results["targets"]["timm_task_ms_ratio"] == round(results["timm_task_ms"] / floor, 3)
    assert "timm_task_peak_mb" not in results
    assert results["machine"]["device"] == "cpu"
    markdown = markdown_path.read_text()
    assert "## Other\n\nkept" in markdown
    assert HEADING in markdown and "(b) distillation, live teacher" in markdown
