"""DeiT's distillation token against class-token distillation on CIFAR-100, equal budget.

A small ViT trained from scratch against the CPU tier's CNN teacher of
``benchmarks/accuracy.py`` (the same teacher, cached logits of the same replayed views, the
same 16x16 data, schedule and seeds), five students per seed:

* ``ce``: the plain ViT (class token only) with cross-entropy alone;
* ``kd``, ``mcld``: the plain ViT distilled on its class token (hf-kd before the token);
* ``token_hard``: the same ViT with a distillation token (timm ``deit_*_distilled_*``), DeiT's
  hard distillation on the token (``--distillation_token_loss hard``, weights 0.5/0.5);
* ``token_kd``, ``token_mcld``: the token trained with KD or MCLD at their CIFAR-100
  presets (``--distillation_token_loss method``), the class head with CE.

The plain and the distilled ViT differ only by the distillation token and its head. Every
run is trained by :class:`hf_kd.trainer.DistillationTrainer` through
``benchmarks/cifar100``'s ``train_student`` and written at once as a record in
``benchmarks/results/deit_token_runs/``; a rerun skips the finished ones (it resumes).
The report, ``benchmarks/results/deit_token.json``, its section of
``benchmarks/RESULTS.md`` and the README table between the ``deit-token-table`` markers,
give mean ± std over seeds, each head's accuracy and paired per-seed deltas.

The teacher is never trained here: ``--teacher_work_dir`` must hold ``teacher/`` and its
cached logits, as ``python benchmarks/accuracy.py --only teacher`` leaves them.

Usage::

    python benchmarks/deit_token.py --teacher_work_dir outputs/accuracy --jobs 2
    python benchmarks/deit_token.py --report
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.cifar100.config import (  # noqa: E402
    DATA_CACHE_DIR,
    DEFAULT_DATASET,
    RESULTS_DIR,
    TIERS,
    StudentSpec,
    TierConfig,
)
from benchmarks.cifar100.data import (  # noqa: E402
    TensorData,
    load_tensor_data,
    model_inputs,
    test_accuracy,
)
from benchmarks.cifar100.records import (  # noqa: E402
    load_records,
    record_path,
    write_record,
)
from benchmarks.cifar100.report import (  # noqa: E402
    _accuracy_cell,
    _delta_cells,
    paired_deltas,
)
from benchmarks.cifar100.training import cached_teacher_logits, train_student  # noqa: E402
from benchmarks.documents import (  # noqa: E402
    replace_marked_block,
    write_atomically,
    write_section,
)
from hf_kd.distillation_token import forward_heads  # noqa: E402
from hf_kd.logit_cache import TeacherLogitCache  # noqa: E402
from hf_kd.models import count_parameters, load_classifier  # noqa: E402

logger = logging.getLogger("benchmarks.deit_token")

STEM = "deit_token"
REPORT_SECTION = "## Distillation token (DeiT) on CIFAR-100 (CPU budget)"
README_START = "<!-- deit-token-table:start -->"
README_END = "<!-- deit-token-table:end -->"
PLAIN_VIT = "deit_tiny_patch16_224"
DISTILLED_VIT = "deit_tiny_distilled_patch16_224"
# 16x16 input, 4x4 patches: 16 patch tokens (+ the class and, distilled, the distillation token)
VIT_KWARGS = {"img_size": 16, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3}
# The CPU tier with a ViT student: AdamW (ViTs train poorly with the CNNs' SGD), DeiT's
# weight decay 0.05, cosine to 0 over the tier's schedule, one torch thread per run.
TIER = replace(
    TIERS["cpu"],
    title="CPU budget, ViT student",
    student_architecture=PLAIN_VIT,
    student_model_kwargs=VIT_KWARGS,
    student_epochs=1,
    optimizer="adamw",
    learning_rate=1e-3,
    weight_decay=0.05,
    torch_threads=1,
)
TOKEN_TIER = replace(TIER, student_architecture=DISTILLED_VIT)
ON_TOKEN = {"distillation_token_loss": "method"}


@dataclass(frozen=True)
class Student:
    """One compared student: its spec (method, preset) and the ViT it trains."""

    spec: StudentSpec
    distillation_token: bool

    @property
    def tier(self) -> TierConfig:
        return TOKEN_TIER if self.distillation_token else TIER


STUDENTS = (
    Student(StudentSpec("ce", "kd", ce_only=True), False),
    Student(StudentSpec("kd", "kd"), False),
    Student(StudentSpec("mcld", "mcld"), False),
    Student(
        StudentSpec("token_hard", "hard", argument_overrides={"distillation_token_loss": "hard"}),
        True,
    ),
    Student(StudentSpec("token_kd", "kd", argument_overrides=ON_TOKEN), True),
    Student(StudentSpec("token_mcld", "mcld", argument_overrides=ON_TOKEN), True),
)
DESCRIPTIONS = {
    "ce": "plain ViT, CE only",
    "kd": "plain ViT, KD on the class token",
    "mcld": "plain ViT, MCLD on the class token",
    "token_hard": "distillation token, DeiT hard distillation",
    "token_kd": "distillation token, KD",
    "token_mcld": "distillation token, MCLD",
}
# (run, baseline): paired per-seed deltas, run minus baseline
COMPARISONS = (
    ("token_mcld", "mcld"),
    ("token_kd", "kd"),
    ("token_hard", "ce"),
    ("token_hard", "kd"),
    ("token_hard", "mcld"),
    ("token_hard", "token_kd"),
    ("token_hard", "token_mcld"),
    ("token_mcld", "token_kd"),
    ("kd", "ce"),
    ("mcld", "ce"),
)


def run_name(student: Student, seed: int) -> str:
    return f"{student.spec.name}_seed{seed}"


def planned_runs(seeds: Sequence[int]) -> list[tuple[Student, int]]:
    """Seed by seed, every student at a seed before the next seed: a partial run still gives
    complete paired comparisons."""
    return [(student, seed) for seed in seeds for student in STUDENTS]


@torch.no_grad()
def head_accuracies(model: PreTrainedModel, data: TensorData, batch_size: int = 1000) -> dict:
    """Top-1 (%) of each head of a distillation-token student on the test set."""
    model.eval()
    correct = torch.zeros(2, dtype=torch.int64)
    for start in range(0, len(data.test_labels), batch_size):
        images = model_inputs(data.test_images[start : start + batch_size], TIER)
        labels = data.test_labels[start : start + batch_size]
        heads = forward_heads(model, model, images)
        correct[0] += int((heads.cls_logits.argmax(dim=1) == labels).sum())
        correct[1] += int((heads.distillation_logits.argmax(dim=1) == labels).sum())
    cls_top1, distillation_top1 = (100.0 * correct / len(data.test_labels)).tolist()
    return {"cls_top1": cls_top1, "distillation_top1": distillation_top1}


def load_data(args: argparse.Namespace) -> TensorData:
    # a smoke run (--limit): its teacher logits are cached for these images only
    return load_tensor_data(
        args.dataset_name, TIER.image_size, Path(args.data_cache_dir), limit=args.limit
    )


def prepare_teacher(
    args: argparse.Namespace, runs_dir: Path, data: TensorData
) -> TeacherLogitCache:
    """The teacher's cached logits (computed once if missing) and its record."""
    teacher_work_dir = Path(args.teacher_work_dir)
    teacher_dir = teacher_work_dir / "teacher"
    if not teacher_dir.is_dir():
        raise FileNotFoundError(
            f"no trained teacher in {teacher_dir}: train it once with `python "
            f"benchmarks/accuracy.py --only teacher --work_dir {teacher_work_dir}`"
        )
    teacher = load_classifier(str(teacher_dir))
    if not record_path(runs_dir, "teacher").exists():
        record = {
            "run": "teacher",
            "architecture": TIER.teacher_architecture,
            "parameters": count_parameters(teacher),
            "top1": test_accuracy(teacher, data, TIER),
            "wall_time_s": 0.0,  # trained by benchmarks/accuracy.py, not here
            "source": str(teacher_dir),
        }
        # a checkpoint of the teacher's run says how far it was trained
        state_file = teacher_dir / "trainer_state.json"
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            record.update(trained_epochs=state["epoch"], trained_steps=state["global_step"])
        write_record(runs_dir, record, TIER, args.dataset_name)
    return cached_teacher_logits(teacher, data, TIER, teacher_work_dir)


def run_students(runs: Sequence[str], args: argparse.Namespace, runs_dir: Path) -> None:
    """Train the named runs that have no record yet, one after another."""
    pending = [
        (student, seed)
        for student, seed in planned_runs(args.seeds)
        if run_name(student, seed) in runs
        and not record_path(runs_dir, run_name(student, seed)).exists()
    ]
    data = load_data(args)
    # the CE-only student trains on the same replayed views (it never reads the logits)
    cached = prepare_teacher(args, runs_dir, data) if pending else None
    work_dir = Path(args.work_dir)
    for student, seed in pending:
        tier = student.tier
        if args.student_epochs is not None:
            tier = replace(tier, student_epochs=args.student_epochs)
        record = train_student(
            student.spec,
            seed,
            tier,
            data,
            work_dir,
            cached,
            extra_metrics=head_accuracies if student.distillation_token else None,
        )
        record["distillation_token"] = student.distillation_token
        write_record(runs_dir, record, tier, args.dataset_name)


# ---- report ----


def summarise(records: dict[str, dict]) -> dict[str, Any]:
    """Per student: top-1 mean/std over seeds (and each head's); paired per-seed deltas."""
    rows: dict[str, dict] = {}
    for student in STUDENTS:
        runs = sorted(
            (record for record in records.values() if record.get("name") == student.spec.name),
            key=lambda record: record["seed"],
        )
        if not runs:
            continue
        row = {
            "description": DESCRIPTIONS[student.spec.name],
            "architecture": runs[0]["architecture"],
            "parameters": runs[0]["parameters"],
            "seeds": [run["seed"] for run in runs],
            "objective": runs[0]["objective"],
            "epochs": runs[0]["epochs"],
            "wall_time_s_mean": statistics.mean(run["wall_time_s"] for run in runs),
        }
        for key in ("top1", "cls_top1", "distillation_top1"):
            if key in runs[0]:
                values = [run[key] for run in runs]
                row[key] = values
                row[f"{key}_mean"] = statistics.mean(values)
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
        rows[student.spec.name] = row
    deltas = {
        f"{run} - {baseline}": paired_deltas(rows[run], rows[baseline])
        for run, baseline in COMPARISONS
        if run in rows and baseline in rows
    }
    return {
        "configuration": {"plain": asdict(TIER), "token": asdict(TOKEN_TIER)},
        "teacher": records.get("teacher"),
        "students": rows,
        "paired_deltas": deltas,
        "pending": sorted(
            run_name(student, seed)
            for student, seed in planned_runs(TIER.seeds)
            if run_name(student, seed) not in records
        ),
    }


def _cell(row: dict, key: str) -> str:
    if f"{key}_mean" not in row:
        return "–"
    return _accuracy_cell(
        {"top1": row[key], "top1_mean": row[f"{key}_mean"], "top1_std": row[f"{key}_std"]}
    )


def results_table(summary: dict) -> str:
    """The per-student table and the paired deltas (Markdown), for RESULTS.md and README."""
    lines = [
        "| student | top-1 % (averaged heads) | class head % | distillation head % | "
        "objective | time per run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in summary["students"].items():
        objective = row["objective"]
        weights = (
            f"{objective['ce_weight']:g} CE + {objective['kd_weight']:g} {objective['method']}"
        )
        if name == "ce":
            weights = "CE"
        lines.append(
            f"| `{name}`: {row['description']} | {_cell(row, 'top1')} | "
            f"{_cell(row, 'cls_top1')} | {_cell(row, 'distillation_top1')} | {weights} | "
            f"{row['wall_time_s_mean']:.0f} |"
        )
    lines += [
        "",
        "Paired deltas (top-1 points, run minus baseline at the same seed; mean ± std, then "
        "each seed):",
        "",
        "| comparison | mean delta | per seed |",
        "|---|---|---|",
    ]
    for comparison, deltas in summary["paired_deltas"].items():
        lines.append(f"| {comparison} | {_delta_cells(deltas)} |")
    return "\n".join(lines)


def markdown_report(summary: dict) -> str:
    tier = summary["configuration"]["plain"]
    teacher = summary["teacher"]
    epochs = sorted({row["epochs"] for row in summary["students"].values()})
    kwargs = json.dumps(tier["student_model_kwargs"])
    lines = [
        REPORT_SECTION,
        "",
        "Reduced budget, **not comparable with DeiT's 300-epoch ImageNet numbers**. "
        f"CIFAR-100 downsampled to {tier['image_size']}x{tier['image_size']}, the CPU tier's "
        f"teacher `{tier['teacher_architecture']}` (trained once by "
        "`benchmarks/accuracy.py`, its logits cached on "
        f"{tier['num_views']} replayed pad-{tier['pad']} crop + flip views per image). "
        f"Students from scratch, timm `{PLAIN_VIT}` (class token only) or "
        f"`{DISTILLED_VIT}` (plus the distillation token and its head), both built with "
        f"`{kwargs}`; epochs {', '.join(f'{value:g}' for value in epochs)}, AdamW lr "
        f"{tier['learning_rate']} weight decay {tier['weight_decay']}, batch "
        f"{tier['batch_size']}, cosine schedule, "
        "each method at its CIFAR-100 preset (`token_hard`: DeiT's 0.5 CE + 0.5 hard). "
        "Top-1 on the full 10,000-image test set at the end of the fixed schedule; the token "
        "students predict the average of their two heads, each head's own top-1 is given "
        "too. One torch thread per run, two or three runs at a time on a 2-core machine "
        "shared with other jobs: the wall times measure that contention, not the methods.",
        "",
    ]
    if teacher is not None:
        trained = ""
        if "trained_epochs" in teacher:
            trained = (
                f", a checkpoint of its run after {teacher['trained_epochs']:.2f} of its "
                f"{tier['teacher_epochs']:g} epochs (step {teacher['trained_steps']})"
            )
        lines += [f"Teacher: **{teacher['top1']:.2f}%** top-1{trained}.", ""]
    lines += [results_table(summary), ""]
    pending = summary["pending"]
    lines += [
        f"Pending runs ({len(pending)}): {', '.join(pending)}."
        if pending
        else "All runs finished.",
        "",
        "Reproduce (resumes; each finished run is a record in "
        "`benchmarks/results/deit_token_runs/`): `python benchmarks/deit_token.py "
        "--teacher_work_dir <accuracy.py's work_dir> --jobs 2`; aggregate with "
        "`python benchmarks/deit_token.py --report`.",
        "",
    ]
    return "\n".join(lines)


def write_report(results_dir: Path, readme: Path | None) -> dict:
    summary = summarise(load_records(results_dir / f"{STEM}_runs"))
    write_atomically(results_dir / f"{STEM}.json", json.dumps(summary, indent=2) + "\n")
    write_section(results_dir.parent / "RESULTS.md", REPORT_SECTION, markdown_report(summary))
    if readme is not None:
        replace_marked_block(readme, README_START, README_END, results_table(summary))
    return summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_name", default=DEFAULT_DATASET, help="path or Hub id")
    parser.add_argument(
        "--teacher_work_dir",
        default=str(REPO_ROOT / "outputs" / "accuracy"),
        help="benchmarks/accuracy.py's work_dir: teacher/ and the cached teacher logits",
    )
    parser.add_argument("--work_dir", default=str(REPO_ROOT / "outputs" / STEM))
    parser.add_argument("--data_cache_dir", default=str(DATA_CACHE_DIR))
    parser.add_argument("--results_dir", default=str(RESULTS_DIR))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(TIER.seeds))
    parser.add_argument("--only", nargs="+", default=None, help="run only these students")
    parser.add_argument("--runs", nargs="+", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs trained at a time, each in its own process"
    )
    parser.add_argument("--threads", type=int, default=TIER.torch_threads)
    parser.add_argument("--report", action="store_true", help="only aggregate the records")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    parser.add_argument("--student_epochs", type=float, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results_dir = Path(args.results_dir)
    runs_dir = results_dir / f"{STEM}_runs"
    is_default = results_dir.resolve() == RESULTS_DIR and args.limit is None
    readme = REPO_ROOT / "README.md" if is_default else None
    if args.runs is not None:  # a worker of --jobs
        run_students(args.runs, args, runs_dir)
        return
    if not args.report:
        pending = [
            run_name(student, seed)
            for student, seed in planned_runs(args.seeds)
            if (args.only is None or student.spec.name in args.only)
            and not record_path(runs_dir, run_name(student, seed)).exists()
        ]
        if any(not name.startswith("ce_") for name in pending):
            prepare_teacher(args, runs_dir, load_data(args))  # once, before the workers
        shards = [pending[index :: args.jobs] for index in range(args.jobs)]
        workers = [
            subprocess.Popen([sys.executable, __file__, *_worker_argv(argv), "--runs", *shard])
            for shard in shards
            if shard
        ]
        failed = [worker.args for worker in workers if worker.wait() != 0]
        if failed:
            raise RuntimeError(f"{len(failed)} worker(s) failed: {failed}")
    write_report(results_dir, readme)


def _worker_argv(argv: Sequence[str] | None) -> list[str]:
    """This command's arguments without ``--jobs N`` (a worker trains its shard alone)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if "--jobs" in arguments:
        index = arguments.index("--jobs")
        del arguments[index : index + 2]
    return arguments


if __name__ == "__main__":
    main()
