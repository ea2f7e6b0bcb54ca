"""The transfer report: per method and dataset, linear-probe top-1 mean ± std over seeds and
the paired per-seed deltas against KD and against CE only; a chart, the transfer section of
``benchmarks/RESULTS.md`` and the README's transfer table."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from benchmarks.cifar100.config import TierConfig
from benchmarks.cifar100.report import paired_deltas
from benchmarks.cifar100.transfer import TRANSFER_METHODS
from benchmarks.documents import (
    replace_atomically,
    replace_marked_block,
    write_atomically,
    write_section,
)

README_START = "<!-- transfer-table:start -->"
README_END = "<!-- transfer-table:end -->"
BASELINES = ("kd", "ce")


def report_title(tier: TierConfig) -> str:
    return f"## Transfer of the CIFAR-100 students (linear probe, {tier.title})"


def summarise_transfer(records: list[dict]) -> dict[str, dict[str, Any]]:
    """``{dataset: {method: row}}``; a row holds the seeds, top-1 % per seed, mean, std (None
    for one seed), the CIFAR-100 top-1 % mean, and ``delta_vs_kd`` / ``delta_vs_ce``."""
    grouped: dict[str, dict[str, list[dict]]] = {}
    for record in records:
        grouped.setdefault(record["dataset"], {}).setdefault(record["method"], []).append(record)
    summary: dict[str, dict[str, Any]] = {}
    for dataset, methods in grouped.items():
        rows = {}
        for method in [name for name in TRANSFER_METHODS if name in methods]:
            runs = sorted(methods[method], key=lambda record: record["seed"])
            top1 = [100 * run["top1_accuracy"] for run in runs]
            rows[method] = {
                "seeds": [run["seed"] for run in runs],
                "top1": top1,
                "mean": statistics.mean(top1),
                "std": statistics.stdev(top1) if len(top1) > 1 else None,
                "cifar100_top1_mean": statistics.mean(100 * run["cifar100_top1"] for run in runs),
                "num_classes": runs[0]["num_classes"],
                "num_train_samples": runs[0]["num_train_samples"],
                "num_eval_samples": runs[0]["num_eval_samples"],
                "display_name": runs[0]["display_name"],
                "wall_time_s_mean": statistics.mean(run["wall_time_s"] for run in runs),
            }
        for method, row in rows.items():
            for baseline in BASELINES:
                # the teacher is one model, not a seed of a student: no paired delta
                paired = method != "teacher"
                row[f"delta_vs_{baseline}"] = (
                    paired_deltas(row, rows.get(baseline)) if paired else None
                )
        summary[dataset] = rows
    return summary


def _mean_std(values: list[float] | None, unit: str = "") -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:+.2f}{unit} (n=1)"
    return f"{statistics.mean(values):+.2f} ± {statistics.stdev(values):.2f}{unit}"


def _cell(row: dict) -> str:
    if row["std"] is None:
        return f"{row['mean']:.2f} (n=1)"
    return f"{row['mean']:.2f} ± {row['std']:.2f}"


def _deltas(deltas: list[float] | None) -> str:
    if deltas is None:
        return "–"
    if all(delta == 0 for delta in deltas):
        return "0 (baseline)"
    each = ", ".join(f"{delta:+.2f}" for delta in deltas)
    return f"{_mean_std(deltas)} ({each})"


def transfer_table(summary: dict[str, dict[str, Any]]) -> str:
    """One Markdown table per dataset (shared by RESULTS.md and the README)."""
    blocks = []
    for dataset, rows in summary.items():
        first = next(iter(rows.values()))
        blocks += [
            f"**{first['display_name']}** (`{dataset}`; {first['num_classes']} classes, "
            f"{first['num_train_samples']:,} train / {first['num_eval_samples']:,} test "
            "images; chance "
            f"{100 / first['num_classes']:.1f}%)",
            "",
            "| model | linear-probe top-1 % (mean ± std) | seeds | Δ vs KD, paired (per seed) "
            "| Δ vs CE only, paired (per seed) | CIFAR-100 top-1 % |",
            "|---|---|---|---|---|---|",
        ]
        for method, row in rows.items():
            blocks.append(
                f"| {method} | {_cell(row)} | {row['seeds']} | {_deltas(row['delta_vs_kd'])} | "
                f"{_deltas(row['delta_vs_ce'])} | {row['cifar100_top1_mean']:.2f} |"
            )
        blocks.append("")
    return "\n".join(blocks).rstrip("\n")


def plot_transfer(summary: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes_list = plt.subplots(
        1, len(summary), figsize=(7 * len(summary), 3.5), squeeze=False
    )
    for axes, (dataset, rows) in zip(axes_list[0], summary.items(), strict=True):
        names = list(rows)
        means = [rows[name]["mean"] for name in names]
        stds = [rows[name]["std"] or 0.0 for name in names]
        colors = ["tab:red" if name == "teacher" else "tab:green" for name in names]
        bars = axes.bar(names, means, yerr=stds, capsize=4, color=colors)
        axes.bar_label(bars, labels=[f"{mean:.1f}" for mean in means], label_type="center")
        axes.set_ylabel("linear-probe top-1 %")
        first = rows[names[0]]
        name = (
            first["display_name"]
            if first["display_name"] == dataset
            else (f"{first['display_name']} ({dataset})")
        )
        axes.set_title(f"{name}: linear probe of CIFAR-100 models, mean ± std over seeds")
        axes.set_ylim(max(0.0, min(means) - 3), max(means) + 2)
    figure.tight_layout()
    replace_atomically(path, lambda partial: figure.savefig(partial, dpi=120))
    plt.close(figure)


def markdown_section(
    summary: dict[str, dict[str, Any]], tier: TierConfig, chart: str, stage_time_s: float
) -> str:
    return "\n".join(
        [
            report_title(tier),
            "",
            "Each kept model of the accuracy stage above (the teacher, the CE-only student and "
            "the six methods, 3 seeds each) is frozen; its penultimate pooled features are "
            "computed once per dataset at its own input size and normalisation "
            f"({tier.image_size}x{tier.image_size}, box filter), and a linear probe "
            "(`hf_kd.transfer`: standardised features, SGD momentum 0.9, lr 0.1 cosine, "
            "weight decay 5e-4, batch 256, 30 epochs) is trained on the train split and "
            "scored on the test split. Deltas are paired by seed (the student minus KD's or "
            "CE-only's student of the same seed), in percentage points: mean ± std over "
            "seeds, then each seed's difference.",
            "",
            transfer_table(summary),
            "",
            f"![linear-probe transfer per method]({chart})",
            "",
            f"The stage's probes took {stage_time_s / 60:.1f} min in all (the sum of the "
            "records' wall times: model loading, features, probe, card update).",
            "",
            "Reproduce (resumes; one record per model and dataset in "
            f"`benchmarks/results/{tier.transfer_stem}_runs/`, gathered in `benchmarks/results/"
            f"{tier.transfer_stem}.json`): `python benchmarks/accuracy.py --transfer` (after the "
            "accuracy stage; `--transfer_datasets` takes any local `datasets` folder or Hub "
            "id, e.g. `tanganke/stl10` where the network allows).",
            "",
        ]
    )


def write_transfer_report(
    records: list[dict], results_dir: Path, tier: TierConfig, readme: Path | None = None
) -> dict[str, dict[str, Any]]:
    """The summary JSON beside ``transfer.json``, the chart, RESULTS.md's section and the
    README's table."""
    summary = summarise_transfer(records)
    if not summary:
        return summary
    stem = tier.transfer_stem
    write_atomically(results_dir / f"{stem}_summary.json", json.dumps(summary, indent=2) + "\n")
    chart = results_dir / f"{stem}.png"
    plot_transfer(summary, chart)
    stage_time = sum(record["wall_time_s"] for record in records)
    section = markdown_section(summary, tier, f"{results_dir.name}/{chart.name}", stage_time)
    write_section(results_dir.parent / "RESULTS.md", report_title(tier), section)
    if readme is not None:
        body = (
            f"{transfer_table(summary)}\n\n![linear-probe transfer per method]"
            f"({os.path.relpath(chart, readme.parent)})"
        )
        replace_marked_block(readme, README_START, README_END, body)
    return summary
