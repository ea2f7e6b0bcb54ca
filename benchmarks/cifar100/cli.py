"""Accuracy of every distillation method under one budget on CIFAR-100, and MCLD ablations.

One teacher is trained once; its logits are cached on ``num_views`` replayed augmented views
of every training image (pad-and-crop + flip drawn once per (image, view); each time a
student sees an image it gets one of those views, picked at random, and the teacher's
logits of exactly that view). Then one student per (method, seed) is trained with
:class:`hf_kd.trainer.DistillationTrainer` at the method's CIFAR-100 preset; the CE-only
student is the same run with ``kd_weight=0``. Every finished run writes its own JSON record
under ``benchmarks/results/accuracy_runs/`` at once, and a rerun skips the finished ones, so
the benchmark resumes where it stopped. ``--report`` (and the end of a run) aggregates the
records into ``benchmarks/results/accuracy.json``, a bar chart and the accuracy section of
``benchmarks/RESULTS.md``.

Two tiers (``--tier``):

* ``cpu`` (default): images downsampled once to 16x16 (2x2 box filter) and kept as uint8
  tensors, a small CIFAR ResNet teacher and a several times smaller student, a few epochs,
  SGD with a cosine schedule. A reduced budget: not comparable with the papers' 240-epoch
  numbers.
* ``full``: the literature recipe for a GPU: ResNet32x4 -> ResNet8x4 at 32x32, SGD lr 0.05,
  momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, lr x0.1 at epochs 150/180/210,
  the teacher trained the same way.

Warm-ups are scaled with the schedule: a preset's 20 warm-up epochs of 240 (DKD, RLD; MCLD's
category warm-up) become ``20 * epochs / 240`` epochs, ramped per step. hf-kd counts epochs
from 1, so a warm-up shorter than one epoch is already complete at the first step.

Each finished model is kept as a Hub-ready folder under ``<work_dir>/models/`` (weights
both timm and transformers load, the model card with the CIFAR-100 test top-1). Stages, one
module each: ``run`` (accuracy: teacher, logits, students), ``transfer`` (linear probe of
every kept model), ``publish`` (push the kept set to a Hub namespace), and the reports.

Usage::

    python benchmarks/accuracy.py                      # CPU tier, resumes
    python benchmarks/accuracy.py --ablations          # + the MCLD ablations
    python benchmarks/accuracy.py --transfer           # + linear-probe transfer, resumes
    python benchmarks/accuracy.py --transfer --push_to_hub --hub_organization <org>
    python benchmarks/accuracy.py --report             # aggregate the finished records
    python benchmarks/accuracy.py --tier full --dataset_name uoft-cs/cifar100
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.cifar100.config import (
    DATA_CACHE_DIR,
    DEFAULT_DATASET,
    REPO_ROOT,
    RESULTS_DIR,
    TIERS,
)
from benchmarks.cifar100.publish import publish
from benchmarks.cifar100.records import load_records
from benchmarks.cifar100.report import compare_records, write_report
from benchmarks.cifar100.run import run_benchmark
from benchmarks.cifar100.transfer import run_transfer
from benchmarks.cifar100.transfer_report import write_transfer_report
from hf_kd.transfer import LinearProbeConfig

# the Tiny-ImageNet subset of the shared data folder next to the checkout; the Hub dataset
# when there is none
DEFAULT_TRANSFER_DATASET = next(
    (
        str(folder / "shared" / "data" / "tiny-imagenet-200-subset")
        for folder in REPO_ROOT.parents
        if (folder / "shared" / "data" / "tiny-imagenet-200-subset").is_dir()
    ),
    "tiny-imagenet",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tier", choices=sorted(TIERS), default="cpu")
    parser.add_argument("--full", action="store_true", help="same as --tier full")
    parser.add_argument("--dataset_name", default=DEFAULT_DATASET, help="path or Hub id")
    parser.add_argument("--work_dir", default=str(REPO_ROOT / "outputs" / "accuracy"))
    parser.add_argument(
        "--data_cache_dir",
        default=str(DATA_CACHE_DIR),
        help="where the decoded, downsampled uint8 images are cached",
    )
    parser.add_argument(
        "--results_dir",
        default=str(RESULTS_DIR),
        help="records: <results_dir>/accuracy_runs; report: RESULTS.md next to <results_dir>",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="run only these students (the teacher is trained first whenever it is missing: "
        "'--only teacher' trains and caches it and runs no student)",
    )
    parser.add_argument("--report", action="store_true", help="only aggregate the records")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images only")
    parser.add_argument("--teacher_epochs", type=float, default=None)
    parser.add_argument("--student_epochs", type=float, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--compare_with",
        default=None,
        help="a folder of records of the same runs made elsewhere (another machine or torch): "
        "print the per-run top-1 differences",
    )
    parser.add_argument(
        "--ablation_seeds",
        type=int,
        nargs="+",
        default=(),
        help="also run the default MCLD and its ablations (those named by --only) at these "
        "extra seeds",
    )
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also run the MCLD ablations (12 options x the seeds) after the methods",
    )
    parser.add_argument(
        "--transfer",
        action="store_true",
        help="after the accuracy stage, probe every kept model on --transfer_datasets",
    )
    parser.add_argument(
        "--transfer_datasets",
        nargs="+",
        default=[DEFAULT_TRANSFER_DATASET],
        help="local datasets folders, Hub ids or the aliases 'stl10' and 'tiny-imagenet' "
        "(tanganke/stl10 where the network allows)",
    )
    parser.add_argument("--transfer_max_train_samples", type=int, default=None)
    parser.add_argument("--transfer_max_eval_samples", type=int, default=None)
    parser.add_argument("--probe_epochs", type=int, default=LinearProbeConfig.epochs)
    parser.add_argument(
        "--push_to_hub",
        action="store_true",
        help="at the end, push the teacher and every kept student to --hub_organization",
    )
    parser.add_argument("--hub_organization", default=None, help="user or organisation")
    parser.add_argument("--hub_token", default=None)
    parser.add_argument("--hub_private_repo", action="store_true", default=None)
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_organization:
        parser.error("--push_to_hub needs --hub_organization <user or organisation>")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    tier = TIERS["full" if args.full else args.tier]
    overrides = {
        "teacher_epochs": args.teacher_epochs,
        "student_epochs": args.student_epochs,
        "seeds": tuple(args.seeds) if args.seeds else None,
        "torch_threads": args.threads,
    }
    tier = replace(tier, **{key: value for key, value in overrides.items() if value is not None})
    torch.set_num_threads(tier.torch_threads)
    results_dir = Path(args.results_dir)
    # Only the default CPU run is shown in the README; other tiers and test runs are not.
    is_default = results_dir.resolve() == RESULTS_DIR and tier.name == "cpu" and not args.limit
    readme = REPO_ROOT / "README.md" if is_default else None
    if not args.report:
        work_dir = Path(args.work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        run_benchmark(
            tier,
            args.dataset_name,
            work_dir,
            results_dir,
            args.limit,
            args.only,
            readme,
            ablation_seeds=args.ablation_seeds,
            data_cache_dir=Path(args.data_cache_dir),
            ablations=args.ablations,
        )
    write_report(results_dir, tier, readme)
    if args.transfer and not args.report:
        run_transfer(
            tier,
            results_dir,
            args.transfer_datasets,
            probe_config=LinearProbeConfig(epochs=args.probe_epochs),
            max_train_samples=args.transfer_max_train_samples,
            max_eval_samples=args.transfer_max_eval_samples,
        )
    transfer_file = results_dir / f"{tier.transfer_stem}.json"
    if transfer_file.exists():
        records = json.loads(transfer_file.read_text())["records"]
        write_transfer_report(records, results_dir, tier, readme)
    if args.push_to_hub:
        publish(
            results_dir,
            tier,
            args.hub_organization,
            token=args.hub_token,
            private=args.hub_private_repo,
        )
    if args.compare_with:
        runs_dir = results_dir / f"{tier.stem}_runs"
        print(compare_records(load_records(runs_dir), load_records(Path(args.compare_with))))
