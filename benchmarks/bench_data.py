"""How fast images reach the models: the PIL path, the decode-once path, and the main job.

Two measurements in one run, on this machine's CPU, one process, ``--threads`` torch threads:

1. *Loader throughput* (images/s): training batches of 64 of the digits training split
   (its first ``--images`` images) with the default job's augmentation (``crop``), built
   to the model input at 32x32 and at 224x224 (the views resized, as for a ViT-224), by
   the PIL path (``Dataset.with_transform(build_transforms(...))``, one image at a time,
   no ``DataLoader`` workers) and by the decode-once path (``DecodedImages`` batches by
   indexing, then :class:`hf_kd.data.DeviceViews` on the CPU, the training device here).
   The one-off decode is timed on its own (``decode_s``) and not counted per epoch.
2. *End to end against the compute floor*: the default main job
   (``examples/distill_vit.py`` with no arguments: its student, arguments and data
   preparation, which chooses the decode-once path; the teacher a random-init
   ``resnet10t`` with the student's preprocessing, as the job's own teacher has) trains
   ``--steps`` steps through its real data path, against the same Trainer fed batches
   already built (the same augmented pixels, made once before timing; only indexing
   left). ``end_to_end_ratio`` = images per CPU second end to end / images per CPU second
   of the floor (the main thread's CPU time, ``time.thread_time``: with one torch thread
   and no loader workers the whole job, data path included, runs on it, and time lost to
   other processes on the shared cores does not count), the median of the per-round
   ratios; ``wall_ratio`` is the same on the wall clock, which that load inflates.

Timing: a callback takes ``time.perf_counter()`` at ``on_step_end``; the window runs from
the end of step ``--warmup`` to the end of the last step, so it holds every later batch's
fetch and collation, the views built in ``_prepare_inputs``, the steps and the logging.
The machine's cores are shared with other jobs: the configurations alternate round by
round (ABBA order) and medians are reported.

Run from the repository root::

    python benchmarks/bench_data.py

Writes ``benchmarks/results/data.json`` and the section "## Data path (CPU)" of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import TrainerCallback

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.bench_trainer import machine_description, machine_load  # noqa: E402
from benchmarks.documents import replace_section  # noqa: E402
from hf_kd.data import (  # noqa: E402
    DeviceViews,
    collate_decoded_batch,
    load_image_dataset,
    prepare_image_split,
)
from hf_kd.models import load_classifier, preprocessing_for  # noqa: E402
from hf_kd.preprocessing import ImagePreprocessing  # noqa: E402
from hf_kd.trainer import DistillationTrainer  # noqa: E402

RESULTS_HEADING = "## Data path (CPU)"
EXAMPLE = REPO_ROOT / "examples" / "distill_vit.py"
LOADER_BATCH = 64
SIZES = (32, 224)
RATIO_TARGET = 0.95


def median_of(values: Sequence[float]) -> float:
    return statistics.median(values)


# ---- 1. loader throughput ----


def images_per_second(loader: torch.utils.data.DataLoader, build: Callable[[Any], Any]) -> float:
    started, count = time.perf_counter(), 0
    for batch in loader:
        count += len(build(batch)["pixel_values"])
    return count / (time.perf_counter() - started)


def loader_throughput(split: Any, size: int, rounds: int, cache_dir: str) -> dict[str, Any]:
    """Images/s of the PIL and the decode-once training loaders at ``size``, alternating."""
    preprocessing = ImagePreprocessing((size, size), (0.5,) * 3, (0.5,) * 3, "bicubic")
    common = {"train": True, "preprocessing": preprocessing, "augment": "crop"}
    pil = prepare_image_split(split, data_path="pil", **common)
    started = time.perf_counter()
    decoded = prepare_image_split(split, data_path="decoded", cache_dir=cache_dir, **common)
    decode_s = time.perf_counter() - started
    views = DeviceViews(preprocessing)
    paths = {
        "pil": (pil, lambda batch: batch),
        "decoded": (decoded, views),
    }
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for round_index in range(rounds):
        order = list(paths) if round_index % 2 == 0 else list(reversed(paths))
        for name in order:
            prepared, build = paths[name]
            loader = torch.utils.data.DataLoader(
                prepared.dataset,
                batch_size=LOADER_BATCH,
                shuffle=True,
                collate_fn=prepared.collator,
            )
            rates[name].append(images_per_second(loader, build))
    return {
        "image_size": size,
        "images": len(split),
        "decode_s": decode_s,
        "pil_images_per_s": median_of(rates["pil"]),
        "decoded_images_per_s": median_of(rates["decoded"]),
        "speedup": median_of(rates["decoded"]) / median_of(rates["pil"]),
        "rounds": {name: values for name, values in rates.items()},
    }


# ---- 2. end to end against the compute floor ----


class StepEnds(TrainerCallback):
    """``(time.perf_counter(), time.thread_time())`` at the end of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[tuple[float, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append((time.perf_counter(), time.thread_time()))


class PrebuiltBatches(torch.utils.data.Dataset):
    """Model inputs built before training: a batch is only indexed out of them."""

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> None:
        self.pixel_values = pixel_values
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        positions = torch.as_tensor(indices)
        return {"pixel_values": self.pixel_values[positions], "labels": self.labels[positions]}


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("distill_vit_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def end_to_end(rounds: int, steps: int, warmup: int, cache_dir: str) -> dict[str, Any]:
    """The default main job's student distillation through its data path vs the floor."""
    example = load_example()
    output_dir = tempfile.mkdtemp(prefix="bench_data_")
    model_args, data_args, args = example.parse_arguments(
        [
            "--output_dir", output_dir,
            "--decoded_cache_dir", cache_dir,
            "--max_steps", str(warmup + steps),
            "--eval_strategy", "no",
            "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    data = load_image_dataset(data_args.dataset_name, seed=args.seed)
    student_kwargs = json.loads(model_args.student_model_kwargs)

    def student() -> torch.nn.Module:
        torch.manual_seed(0)
        return load_classifier(
            model_args.student_model_name_or_path,
            id2label=data.id2label,
            pretrained=False,
            model_kwargs=student_kwargs,
        )

    preprocessing = preprocessing_for(student())
    torch.manual_seed(1)
    teacher = load_classifier(
        model_args.teacher_architecture, id2label=data.id2label, pretrained=False
    )
    train, _, _ = example.prepare_splits(data, data_args, preprocessing, preprocessing)
    # the floor's batches: the same kind of augmented views, built once before timing
    batch = collate_decoded_batch(train.dataset.__getitems__(list(range(len(train.dataset)))))
    prebuilt = DeviceViews(preprocessing)(batch)
    floor = PrebuiltBatches(prebuilt["pixel_values"], prebuilt["labels"])
    datasets = {
        "end_to_end": (train.dataset, train.collator),
        "floor": (floor, collate_decoded_batch),
    }
    rates: dict[str, list[float]] = {name: [] for name in datasets}
    cpu_rates: dict[str, list[float]] = {name: [] for name in datasets}
    images = steps * args.per_device_train_batch_size
    for round_index in range(rounds):
        order = list(datasets) if round_index % 2 == 0 else list(reversed(datasets))
        for name in order:
            dataset, collator = datasets[name]
            timer = StepEnds()
            trainer = DistillationTrainer(
                model=student(),
                teacher_model=teacher,
                args=args,
                train_dataset=dataset,
                data_collator=collator,
                student_preprocessing=preprocessing,
                teacher_preprocessing=preprocessing,
                callbacks=[timer],
            )
            trainer.train()
            (start_wall, start_cpu), (end_wall, end_cpu) = timer.ends[warmup - 1], timer.ends[-1]
            rates[name].append(images / (end_wall - start_wall))
            cpu_rates[name].append(images / (end_cpu - start_cpu))
    ratios = [e / f for e, f in zip(rates["end_to_end"], rates["floor"], strict=True)]
    cpu_ratios = [e / f for e, f in zip(cpu_rates["end_to_end"], cpu_rates["floor"], strict=True)]
    return {
        "job": "examples/distill_vit.py defaults (student distillation; random-init teacher)",
        "data_path": train.data_path,
        "distillation_method": args.distillation_method,
        "batch_size": args.per_device_train_batch_size,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "end_to_end_images_per_s": median_of(rates["end_to_end"]),
        "floor_images_per_s": median_of(rates["floor"]),
        "wall_ratio": median_of(ratios),
        "wall_ratios": ratios,
        "end_to_end_cpu_images_per_s": median_of(cpu_rates["end_to_end"]),
        "floor_cpu_images_per_s": median_of(cpu_rates["floor"]),
        "end_to_end_ratio": median_of(cpu_ratios),
        "cpu_ratios": cpu_ratios,
        "rounds": rates,
        "cpu_rounds": cpu_rates,
    }


# ---- report ----


def markdown_section(results: dict[str, Any], command: str) -> str:
    job = results["end_to_end"]
    lines = [
        RESULTS_HEADING,
        "",
        f"Command: `{command}`; {results['machine']['cpu']}, {results['threads']} torch "
        f"thread(s), one process, no loader workers; measured {results['measured_at']}. "
        f"Load: {machine_load(results['machine'])}. Medians over {results['rounds']} "
        "alternating rounds.",
        "",
        "Training loaders, wall clock (batches of 64 of the digits training split, the "
        "default job's `crop` augmentation, up to the normalised model input):",
        "",
        "| view size | PIL path (images/s) | decode-once path (images/s) | speed-up | "
        "one-off decode (s) |",
        "|---|---|---|---|---|",
    ]
    for row in results["loaders"]:
        lines.append(
            f"| {row['image_size']}x{row['image_size']} | {row['pil_images_per_s']:,.0f} | "
            f"{row['decoded_images_per_s']:,.0f} | {row['speedup']:.1f}x | {row['decode_s']:.2f} |"
        )
    target = "met" if job["end_to_end_ratio"] >= RATIO_TARGET else "**missed**"
    lines += [
        "",
        f"The default main job ({job['data_path']} path, {job['distillation_method']}, batch "
        f"{job['batch_size']}, {job['timed_steps']} timed steps after {job['warmup_steps']}) "
        "against its compute floor, the same Trainer fed batches already built:",
        "",
        "| clock | end to end (images/s) | floor (images/s) | ratio (median of rounds) | "
        "per-round ratios |",
        "|---|---|---|---|---|",
        f"| main thread CPU | {job['end_to_end_cpu_images_per_s']:.0f} | "
        f"{job['floor_cpu_images_per_s']:.0f} | **{job['end_to_end_ratio']:.3f}** | "
        + ", ".join(f"{ratio:.3f}" for ratio in job["cpu_ratios"])
        + " |",
        f"| wall | {job['end_to_end_images_per_s']:.0f} | {job['floor_images_per_s']:.0f} | "
        f"{job['wall_ratio']:.3f} | "
        + ", ".join(f"{ratio:.3f}" for ratio in job["wall_ratios"])
        + " |",
        "",
        f"end_to_end_ratio (CPU time) {job['end_to_end_ratio']:.3f}: target >= {RATIO_TARGET} "
        f"{target}. The wall-clock figures move with the other jobs on the shared cores.",
        "",
    ]
    return "\n".join(lines)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256, help="images per loader pass")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per training run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--json", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "data.json"
    )
    parser.add_argument("--markdown", type=Path, default=REPO_ROOT / "benchmarks" / "RESULTS.md")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    arguments = parse_arguments(argv)
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(arguments.threads)
    cache_dir = tempfile.mkdtemp(prefix="bench_data_decoded_")
    split = load_image_dataset("digits").splits["train"].select(range(arguments.images))
    results = {
        "threads": arguments.threads,
        "rounds": arguments.rounds,
        "machine": machine_description(arguments.threads),
        "loaders": [loader_throughput(split, size, arguments.rounds, cache_dir) for size in SIZES],
        "end_to_end": end_to_end(arguments.rounds, arguments.steps, arguments.warmup, cache_dir),
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    results["end_to_end_ratio"] = results["end_to_end"]["end_to_end_ratio"]
    command = "python benchmarks/bench_data.py " + " ".join(sys.argv[1:] if argv is None else argv)
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(results, indent=2) + "\n")
    existing = arguments.markdown.read_text() if arguments.markdown.exists() else ""
    arguments.markdown.write_text(
        replace_section(existing, RESULTS_HEADING, markdown_section(results, command.strip()))
    )
    print(json.dumps({key: results[key] for key in ("end_to_end_ratio", "loaders")}, indent=2))
    return results


if __name__ == "__main__":
    main()
