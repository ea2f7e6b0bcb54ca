"""The accuracy report: per-method mean ± std over seeds, paired ablation deltas, the chart,
the accuracy section of ``benchmarks/RESULTS.md`` and the README's table."""

from __future__ import annotations

import json
import logging
import os
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.cifar100.config import (
    ABLATION_OVERRIDES,
    MCLD_ABLATIONS,
    METHODS,
    PAPER_SCHEDULE_EPOCHS,
    TierConfig,
    names_an_ablation,
    planned_runs,
)
from benchmarks.cifar100.records import load_records
from benchmarks.documents import (
    replace_atomically,
    replace_marked_block,
    write_atomically,
    write_section,
)

logger = logging.getLogger("benchmarks.cifar100")

README_START = "<!-- accuracy-table:start -->"
README_END = "<!-- accuracy-table:end -->"


def summarise(records: dict[str, dict], tier: TierConfig) -> dict[str, Any]:
    """Teacher, per-method mean/std over seeds, ablations and what is still pending."""
    students: dict[str, list[dict]] = {}
    for run, record in records.items():
        if run != "teacher":
            students.setdefault(record["name"], []).append(record)
    summary_rows = {}
    for name, runs in students.items():
        runs = sorted(runs, key=lambda run: run["seed"])
        accuracies = [run["top1"] for run in runs]
        summary_rows[name] = {
            "method": runs[0]["method"],
            "seeds": [run["seed"] for run in runs],
            "top1": accuracies,
            "top1_mean": statistics.mean(accuracies),
            "top1_std": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
            "wall_time_s_mean": statistics.mean(run["wall_time_s"] for run in runs),
            "objective": runs[0]["objective"],
        }
    # The ablations are planned when one of them has run in this folder (--ablations).
    ablations = names_an_ablation([record.get("name") for record in records.values()])
    pending = [
        f"{spec.name}_seed{seed}"
        for spec, seed in planned_runs(tier, ablations)
        if f"{spec.name}_seed{seed}" not in records
    ]
    if "teacher" not in records:
        pending.insert(0, "teacher")
    return {
        "configuration": asdict(tier),
        "teacher": records.get("teacher"),
        "methods": {
            spec.name: summary_rows[spec.name] for spec in METHODS if spec.name in summary_rows
        },
        "mcld_ablations": {
            spec.name: {
                **summary_rows[spec.name],
                "delta_vs_default": paired_deltas(
                    summary_rows[spec.name], summary_rows.get("mcld")
                ),
            }
            for spec in MCLD_ABLATIONS
            if spec.name in summary_rows
        },
        "pending": pending,
        "device": ", ".join(
            sorted(
                {
                    record.get("device", f"CPU ({record.get('torch_threads')} torch threads)")
                    for record in records.values()
                }
            )
        )
        or "none yet",
    }


def _accuracy_cell(row: dict) -> str:
    if row["top1_std"] is None:
        return f"{row['top1_mean']:.2f} (n=1)"
    return f"{row['top1_mean']:.2f} ± {row['top1_std']:.2f} (n={len(row['top1'])})"


def markdown_report(summary: dict, tier_config: TierConfig, chart_name: str) -> str:
    tier = summary["configuration"]
    teacher = summary["teacher"]
    if tier["image_size"] == 32:
        resolution = "CIFAR-100 at its native 32x32"
    else:
        resolution = (
            f"CIFAR-100 downsampled to {tier['image_size']}x{tier['image_size']} (2x2 box filter)"
        )
    if tier["num_views"] > 0:
        teacher_signal = f"teacher logits cached on {tier['num_views']} replayed views per image"
    else:
        teacher_signal = "live teacher on fresh augmentation"
    budget = (
        "Literature recipe"
        if tier["student_epochs"] >= PAPER_SCHEDULE_EPOCHS
        else "Reduced budget, **not comparable with the papers' 240-epoch numbers**"
    )
    lines = [
        tier_config.report_section,
        "",
        f"{budget}. Configuration: {resolution}, "
        f"teacher `{tier['teacher_architecture']}` trained once for {tier['teacher_epochs']} "
        f"epochs, students `{tier['student_architecture']}` for {tier['student_epochs']} "
        f"epochs; SGD lr {tier['learning_rate']} momentum {tier['momentum']} weight decay "
        f"{tier['weight_decay']}, batch {tier['batch_size']}, {tier['schedule']} schedule; "
        f"augmentation pad-{tier['pad']} crop + flip, {teacher_signal}; each method at its "
        "CIFAR-100 preset (hf_kd.losses.preset), "
        "warm-ups scaled by epochs/240 (DKD, RLD, MCLD's category term). Top-1 on the full "
        "10,000-image test set at the end of the fixed schedule (no validation split, no "
        f"early stopping). Device: {summary['device']}; wall times are only comparable with "
        "each other.",
        "",
    ]
    if teacher is not None:
        lines.append(
            f"Teacher `{teacher['architecture']}` ({teacher['parameters']:,} parameters): "
            f"**{teacher['top1']:.2f}%** top-1, trained in {teacher['wall_time_s'] / 60:.1f} min."
        )
        lines.append("")
    lines += [methods_table(summary), "", f"![accuracy per method]({chart_name})", ""]
    if summary["mcld_ablations"]:
        lines += [
            "MCLD ablations (each changes one option of the defaults of spec 6.2). The delta "
            "is paired: ablation minus default MCLD at the same seed, mean ± std over seeds, "
            "then each seed's difference:",
            "",
            "| ablation | options | top-1 % | delta vs default | per-seed deltas |",
            "|---|---|---|---|---|",
        ]
        for name, row in summary["mcld_ablations"].items():
            options = ABLATION_OVERRIDES[name]
            lines.append(
                f"| {name} | `{json.dumps(options)}` | {_accuracy_cell(row)} | "
                f"{_delta_cells(row['delta_vs_default'])} |"
            )
        lines.append("")
    else:
        lines += [
            "MCLD ablations: none in these records (`python benchmarks/accuracy.py "
            "--ablations` runs them, paired with the default MCLD of the same seeds).",
            "",
        ]
    pending = summary["pending"]
    lines.append(
        f"Pending runs ({len(pending)}): {', '.join(pending)}." if pending else "All runs finished."
    )
    lines += [
        "",
        "Reproduce (resumes; every finished run is a record in "
        "`benchmarks/results/accuracy_runs/`): `python benchmarks/accuracy.py`; aggregate "
        "with `python benchmarks/accuracy.py --report`.",
        "",
    ]
    return "\n".join(lines)


def paired_deltas(row: dict, baseline: dict | None) -> list[float] | None:
    """Per-seed differences, ``row``'s top-1 minus ``baseline``'s at the same seed (in
    ``row``'s seed order; e.g. an ablation against the default MCLD); ``None`` when the
    baseline has not run at every one of them."""
    if baseline is None or not set(row["seeds"]) <= set(baseline["seeds"]):
        return None
    return [
        accuracy - baseline["top1"][baseline["seeds"].index(seed)]
        for seed, accuracy in zip(row["seeds"], row["top1"], strict=True)
    ]


def _delta_cells(deltas: list[float] | None) -> str:
    """``mean ± std | d0, d1, ...`` of paired deltas (two table cells)."""
    if deltas is None:
        return "n/a | n/a"
    spread = f" ± {statistics.stdev(deltas):.2f}" if len(deltas) > 1 else ""
    each = ", ".join(f"{delta:+.2f}" for delta in deltas)
    return f"{statistics.mean(deltas):+.2f}{spread} | {each}"


def compare_records(records: dict[str, dict], other: dict[str, dict]) -> str:
    """A Markdown table of the runs both folders hold: top-1 in each and the difference,
    with each folder's library versions (reproducibility across environments)."""
    lines = [
        "| run | top-1 % here | top-1 % other | difference |",
        "|---|---|---|---|",
    ]
    differences = []
    for run in sorted(set(records) & set(other)):
        here, there = records[run]["top1"], other[run]["top1"]
        differences.append(here - there)
        lines.append(f"| {run} | {here:.2f} | {there:.2f} | {here - there:+.2f} |")
    if differences:
        absolute = [abs(difference) for difference in differences]
        lines += [
            "",
            f"{len(differences)} runs in both; identical: "
            f"{sum(difference == 0 for difference in differences)}; mean |difference| "
            f"{statistics.mean(absolute):.2f}, largest {max(absolute):.2f}.",
        ]
    for name, folder in (("here", records), ("other", other)):
        versions = sorted({json.dumps(r["versions"]) for r in folder.values() if "versions" in r})
        lines.append(f"Versions {name}: {', '.join(versions) or 'not recorded'}.")
    return "\n".join(lines)


def methods_table(summary: dict) -> str:
    """The per-method table (Markdown), shared by RESULTS.md and the README."""
    lines = [
        "| method | top-1 % (mean ± std over seeds) | seeds | wall time per run (s) |",
        "|---|---|---|---|",
    ]
    if summary["teacher"] is not None:
        teacher = summary["teacher"]
        lines.append(
            f"| teacher `{teacher['architecture']}` | {teacher['top1']:.2f} | [0] | "
            f"{teacher['wall_time_s']:.0f} |"
        )
    for name, row in summary["methods"].items():
        lines.append(
            f"| {name} | {_accuracy_cell(row)} | {row['seeds']} | {row['wall_time_s_mean']:.0f} |"
        )
    return "\n".join(lines)


def update_readme(readme: Path, summary: dict, chart: str) -> None:
    """Replace the table between the README's accuracy markers (if it has them)."""
    pending = summary["pending"]
    status = f"{len(pending)} planned runs still pending." if pending else "All runs finished."
    body = f"{methods_table(summary)}\n\n![accuracy per method]({chart})\n\n{status}"
    replace_marked_block(readme, README_START, README_END, body)


def plot_methods(summary: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["methods"])
    means = [summary["methods"][name]["top1_mean"] for name in names]
    stds = [summary["methods"][name]["top1_std"] or 0.0 for name in names]
    figure, axes = plt.subplots(figsize=(7, 3.5))
    bars = axes.bar(names, means, yerr=stds, capsize=4, color="tab:blue")
    # the axis does not start at 0: print each mean on its bar
    axes.bar_label(bars, labels=[f"{mean:.1f}" for mean in means], label_type="center", color="w")
    if summary["teacher"] is not None:
        axes.axhline(summary["teacher"]["top1"], color="tab:red", linestyle="--", label="teacher")
        axes.legend()
    axes.set_ylabel("top-1 % (CIFAR-100 test)")
    axes.set_title(f"CIFAR-100, {title} (mean ± std over seeds)")
    highest = [*means, summary["teacher"]["top1"]] if summary["teacher"] else means
    axes.set_ylim(max(0.0, min(means) - 5), max(highest) + 3)
    figure.tight_layout()
    replace_atomically(path, lambda partial: figure.savefig(partial, dpi=120))
    plt.close(figure)


def write_report(results_dir: Path, tier: TierConfig, readme: Path | None = None) -> dict:
    """Aggregate the records into accuracy.json, the chart and the accuracy section of the
    RESULTS.md next to ``results_dir``."""
    summary = summarise(load_records(results_dir / f"{tier.stem}_runs"), tier)
    results_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(results_dir / f"{tier.stem}.json", json.dumps(summary, indent=2) + "\n")
    chart = results_dir / f"{tier.stem}.png"
    results_md = results_dir.parent / "RESULTS.md"
    if summary["methods"]:
        plot_methods(summary, tier.title, chart)
    section = markdown_report(summary, tier, f"{results_dir.name}/{chart.name}")
    write_section(results_md, tier.report_section, section)
    if readme is not None:
        update_readme(readme, summary, os.path.relpath(chart, readme.parent))
    return summary
