"""What distillation costs on top of plain training: step time and peak memory on CPU.

Four configurations on the same student, teacher and batch (the ``distill_vit`` pair: a
timm ``vit_tiny_patch16_224`` student at 32x32 with ``patch_size=4, embed_dim=96, depth=4,
num_heads=3``, a timm ``resnet18`` teacher at 32x32, 10 classes, random weights from
:func:`hf_kd.models.load_classifier`, batch 64):

* ``plain``: cross-entropy fine-tuning of the student with transformers' own ``Trainer``
  (the student's built-in loss), the reference "ordinary training";
* ``live``: :class:`hf_kd.trainer.DistillationTrainer` with the teacher running every step;
* ``cached``: the same trainer, the batch carrying the teacher's ``teacher_logits``;
* ``teacher_fwd``: the teacher's forward alone, ``teacher(pixel_values=...)`` under
  ``torch.inference_mode``;
* ``timm_task`` (timed only): the peer, timm's own ``timm.task.LogitDistillationTask``
  step on the same timm student, teacher and batch (:func:`time_timm_task`), reported as
  ``timm_task_ms`` with its ratio to the same floor as ``live`` (plain + teacher forward).

Targets (issue 5): ``live <= 1.05 (plain + teacher_fwd)``, ``cached <= 1.05 plain``, and
live peak memory ``<= 1.10 (plain peak + teacher weights)``.

How time is measured. The step timed is the step the Trainer really runs: ``train()`` on a
dataset of exactly one batch, with a callback taking ``time.perf_counter()`` at
``on_step_begin`` and ``on_step_end``. That window holds ``training_step`` (inputs to the
device, forwards, loss, backward), gradient clipping, the optimizer step (transformers'
default fused AdamW), the scheduler step and ``zero_grad``; the batch is fetched and
collated before ``on_step_begin`` and logs are written after ``on_step_end``, so data
loading and logging stay out of it. Each ``train()`` call runs ``warmup + steps`` steps and
the first ``warmup`` (optimizer state allocation, the first-step input validation) are
dropped. Both trainers get the same ``TrainingArguments`` values, among them
``logging_nan_inf_filter=False`` (the distillation default; on CPU it costs nothing
anyway). The machine's cores are shared with other jobs, so the configurations are
interleaved, ``plain, live, cached, teacher_fwd``, then ``live, cached, teacher_fwd,
plain`` and so on (rotated so that none always runs first), for ``--rounds`` rounds with a
fresh Trainer each time: a load spike hits all of them alike. The medians over all rounds
are reported, the wall clock's with its interquartile range, and next to it the median CPU
time of the main thread (``time.thread_time``): with one torch thread all the step's
compute runs on that thread, and time lost to other processes on the shared cores does not
count. ``torch.set_num_threads`` is fixed (``--threads``, 1 by default) in every process.
The same runs split each step's CPU time into phases with forward hooks on the two models
and the optimizer callbacks (:class:`StepTimer`): student forward, teacher forward, loss +
backward + clipping, optimizer, the rest; that table is the breakdown to read when a target
is missed. Last, one run per configuration under ``torch.profiler`` lists the ATen calls
that the distillation steps add to the plain step (and to the teacher's forward): exact
call counts, so an extra student forward or a stray copy would show at once.

How memory is measured. Each configuration runs in its own subprocess. After the imports
the process notes its resident set size (RSS), builds its models (the student, the teacher,
or both) and batch, resets the kernel's RSS high-water mark (``/proc/self/clear_refs``,
writing 5; Linux >= 4.0) so that the two model copies ``load_classifier`` makes while
building do not count, trains ``warmup + steps`` steps (or runs the teacher's forward) and
reads the high-water mark ``VmHWM``. The reported peak is ``VmHWM`` minus the RSS after the
imports: weights that stay, gradients, optimizer state, activations. glibc is told to serve
every allocation above 64 KiB with its own ``mmap`` (``MALLOC_MMAP_THRESHOLD_=65536``), so a
freed tensor leaves the RSS at once and the high-water mark follows live memory instead of
the allocator's cached heap. ``teacher_weights_mb`` is the teacher's parameters and buffers.

Run from the repository root::

    python benchmarks/bench_trainer.py            # writes the two result files below
    python benchmarks/bench_trainer.py --help

Writes ``benchmarks/results/trainer.json`` and the section "## Trainer step (CPU)" of
``benchmarks/RESULTS.md`` (other sections are kept).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: hf_kd from this checkout
    sys.path.insert(0, str(REPO_ROOT))

import timm  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from benchmarks.documents import replace_section  # noqa: E402
from hf_kd.arguments import DistillationArguments  # noqa: E402
from hf_kd.losses import build_loss  # noqa: E402
from hf_kd.models import load_classifier  # noqa: E402
from hf_kd.trainer import DistillationTrainer  # noqa: E402

CONFIGURATIONS = ("plain", "live", "cached", "teacher_fwd")
# timed with the others, not measured for memory: timm's own distillation step
TIMED_CONFIGURATIONS = (*CONFIGURATIONS, "timm_task")
NUM_CLASSES = 10
IMAGE_SIZE = 32
STUDENT = "vit_tiny_patch16_224"
STUDENT_KWARGS = {
    "img_size": IMAGE_SIZE,
    "patch_size": 4,
    "embed_dim": 96,
    "depth": 4,
    "num_heads": 3,
}
TEACHER = "resnet18"
TEACHER_KWARGS: dict[str, Any] = {}
RESULTS_HEADING = "## Trainer step (CPU)"
ROW_LABELS = {
    "plain": "(a) plain CE, transformers `Trainer`",
    "live": "(b) distillation, live teacher",
    "cached": "(c) distillation, cached logits",
    "teacher_fwd": "(d) teacher forward, inference mode",
    "timm_task": "(e) timm `LogitDistillationTask` step",
}
MALLOC_MMAP_THRESHOLD = "65536"
TIME_TARGET = 1.05
MEMORY_TARGET = 1.10
MIB = 2**20


@dataclass(frozen=True)
class Settings:
    method: str
    batch_size: int
    threads: int
    rounds: int
    steps: int
    warmup: int


# ---- models, batch and trainers ----


def build_student() -> torch.nn.Module:
    torch.manual_seed(0)
    return load_classifier(
        STUDENT, num_labels=NUM_CLASSES, pretrained=False, model_kwargs=STUDENT_KWARGS
    )


def build_teacher() -> torch.nn.Module:
    torch.manual_seed(1)
    return load_classifier(
        TEACHER, num_labels=NUM_CLASSES, pretrained=False, model_kwargs=TEACHER_KWARGS
    ).eval()


def build_batch(batch_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "labels": torch.randint(NUM_CLASSES, (batch_size,), generator=generator),
    }


def teacher_logits_of(teacher: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a float32 teacher-logit cache holds for this batch."""
    with torch.inference_mode():
        return teacher(pixel_values=batch["pixel_values"]).logits.float().clone()


class OneBatch(torch.utils.data.Dataset):
    """The rows of one fixed batch: every optimizer step trains on the same images."""

    def __init__(self, batch: dict[str, torch.Tensor]):
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["labels"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: column[index] for name, column in self.batch.items()}


def common_arguments(output_dir: str, settings: Settings) -> dict[str, Any]:
    """The ``TrainingArguments`` values every configuration shares."""
    return {
        "output_dir": output_dir,
        "use_cpu": True,
        "report_to": [],
        "disable_tqdm": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "logging_nan_inf_filter": False,
        "per_device_train_batch_size": settings.batch_size,
        "dataloader_num_workers": 0,
        "max_steps": settings.warmup + settings.steps,
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant",
        "seed": 0,
    }


def build_trainer(
    configuration: str,
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    batch: dict[str, torch.Tensor],
    settings: Settings,
    output_dir: str,
    callbacks: Sequence[TrainerCallback] = (),
) -> Trainer:
    values = common_arguments(output_dir, settings)
    if configuration == "plain":
        return Trainer(
            model=student,
            args=TrainingArguments(**values),
            train_dataset=OneBatch(batch),
            callbacks=list(callbacks),
        )
    args = DistillationArguments(**values, distillation_method=settings.method)
    if configuration == "live":
        return DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=OneBatch(batch),
            callbacks=list(callbacks),
        )
    if configuration == "cached":
        cached = {**batch, "teacher_logits": teacher_logits_of(teacher, batch)}
        return DistillationTrainer(
            model=student, args=args, train_dataset=OneBatch(cached), callbacks=list(callbacks)
        )
    raise ValueError(f"no trainer for configuration {configuration!r}")


# ---- timing ----


PHASES = ("student forward", "teacher forward", "loss, backward, clipping", "optimizer", "other")
# A step's phases, each named after the event that ends it (see StepTimer).
PHASE_ENDED_BY = {
    "student_forward_start": "other",
    "student_forward_end": "student forward",
    "teacher_forward_start": "other",
    "teacher_forward_end": "teacher forward",
    "pre_optimizer_step": "loss, backward, clipping",
    "optimizer_step_end": "optimizer",
    "step_end": "other",
}


@dataclass
class StepTimes:
    """Per step: wall-clock ms, the main thread's CPU ms, and that CPU time per phase."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    phases_cpu: dict[str, list[float]] = field(
        default_factory=lambda: {phase: [] for phase in PHASES}
    )

    def extend(self, other: StepTimes, skip: int = 0) -> None:
        self.wall += other.wall[skip:]
        self.cpu += other.cpu[skip:]
        for phase in PHASES:
            self.phases_cpu[phase] += other.phases_cpu[phase][skip:]


Clock = tuple[float, float]  # (time.perf_counter(), time.thread_time()) in seconds


def read_clocks() -> Clock:
    return time.perf_counter(), time.thread_time()


class StepTimer(TrainerCallback):
    """Times each optimizer step, ``on_step_begin`` to ``on_step_end``, and its phases.

    Forward hooks on the student and the teacher and the optimizer callbacks mark the
    events of a step; the CPU time between two events is charged to the phase that the
    later event ends (``PHASE_ENDED_BY``): the student's forward (for the plain ``Trainer``
    it includes the model's own cross-entropy), the teacher's forward, everything from the
    last forward to the optimizer (the distillation loss, backward, gradient clipping), the
    optimizer step, and the rest (inputs to the device, scheduler, ``zero_grad``).
    """

    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module | None) -> None:
        self.times = StepTimes()
        self._events: list[tuple[str, Clock]] = []
        self._hooks = self._mark_forwards(student, "student")
        if teacher is not None:
            self._hooks += self._mark_forwards(teacher, "teacher")

    def _mark_forwards(self, model: torch.nn.Module, name: str) -> list[Any]:
        return [
            model.register_forward_pre_hook(lambda *_: self._mark(f"{name}_forward_start")),
            model.register_forward_hook(lambda *_: self._mark(f"{name}_forward_end")),
        ]

    def _mark(self, event: str) -> None:
        if self._events:  # only inside a step
            self._events.append((event, read_clocks()))

    def remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def on_step_begin(self, args, state, control, **kwargs):
        self._events = [("step_begin", read_clocks())]

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._mark("pre_optimizer_step")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._mark("optimizer_step_end")

    def on_step_end(self, args, state, control, **kwargs):
        self._mark("step_end")
        (_, (first_wall, first_cpu)), (_, (last_wall, last_cpu)) = self._events[0], self._events[-1]
        self.times.wall.append((last_wall - first_wall) * 1e3)
        self.times.cpu.append((last_cpu - first_cpu) * 1e3)
        phases = dict.fromkeys(PHASES, 0.0)
        for (_, (_, start_cpu)), (event, (_, end_cpu)) in zip(
            self._events, self._events[1:], strict=False
        ):
            phases[PHASE_ENDED_BY[event]] += (end_cpu - start_cpu) * 1e3
        for phase, milliseconds in phases.items():
            self.times.phases_cpu[phase].append(milliseconds)
        self._events = []


def time_teacher_forward(
    teacher: torch.nn.Module, batch: dict[str, torch.Tensor], repeats: int
) -> StepTimes:
    times = StepTimes()
    pixel_values = batch["pixel_values"]
    for _ in range(repeats):
        start_wall, start_cpu = read_clocks()
        with torch.inference_mode():
            teacher(pixel_values=pixel_values)
        end_wall, end_cpu = read_clocks()
        times.wall.append((end_wall - start_wall) * 1e3)
        times.cpu.append((end_cpu - start_cpu) * 1e3)
        for phase in PHASES:
            forward = phase == "teacher forward"
            times.phases_cpu[phase].append((end_cpu - start_cpu) * 1e3 if forward else 0.0)
    return times


def time_timm_task(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    settings: Settings,
) -> StepTimes:
    """Steps of timm's own ``timm.task.LogitDistillationTask`` on the same timm student,
    teacher and batch, with what the Trainer's step also does: the same optimizer
    (fused AdamW, lr 1e-4, no weight decay), gradient clipping at 1.0 and ``zero_grad``; KD
    at hf-kd's ``kd`` temperature and weights. timm's task runs the teacher under
    ``torch.no_grad`` and re-normalises the batch for it when their ``pretrained_cfg``
    statistics differ (here: the ViT's 0.5 vs the ResNet's ImageNet ones)."""
    from timm.task import LogitDistillationTask
    from timm.task.distillation import DistillationTeacher

    objective = DistillationArguments(output_dir="unused", distillation_method="kd")
    objective = objective.resolve_objective()
    temperature = build_loss("kd", **objective.loss_kwargs).temperature
    task = LogitDistillationTask(
        student.timm_model,
        DistillationTeacher(teacher.timm_model),
        criterion=torch.nn.CrossEntropyLoss(),
        task_loss_weight=objective.ce_weight,
        distill_loss_weight=objective.kd_weight,
        temperature=temperature,
        verbose=False,
    ).train()
    parameters = [p for p in task.trainable_module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, weight_decay=0.0, fused=True)
    timer = StepTimer(task.trainable_module, task.teacher.model)
    pixel_values, labels = batch["pixel_values"], batch["labels"]
    try:
        for _ in range(settings.warmup + settings.steps):
            timer.on_step_begin(None, None, None)
            task(pixel_values, labels)["loss"].backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            timer.on_pre_optimizer_step(None, None, None)
            optimizer.step()
            timer.on_optimizer_step(None, None, None)
            optimizer.zero_grad()
            timer.on_step_end(None, None, None)
    finally:
        timer.remove_hooks()
    return timer.times


def time_round(
    configuration: str,
    models: dict[str, torch.nn.Module],
    batch: dict[str, torch.Tensor],
    settings: Settings,
    output_dir: str,
) -> StepTimes:
    """Step times of one fresh run of ``configuration``, warm-up steps included."""
    repeats = settings.warmup + settings.steps
    if configuration == "teacher_fwd":
        return time_teacher_forward(models["teacher"], batch, repeats)
    if configuration == "timm_task":
        return time_timm_task(models["timm_task"], models["teacher"], batch, settings)
    student = models[configuration]
    timer = StepTimer(student, models["teacher"] if configuration == "live" else None)
    trainer = build_trainer(
        configuration, student, models["teacher"], batch, settings, output_dir, [timer]
    )
    try:
        trainer.train()
    finally:
        timer.remove_hooks()
    return timer.times


def measure_step_times(settings: Settings) -> dict[str, StepTimes]:
    """Interleaved rounds of every configuration; all timed steps per configuration."""
    student, teacher = build_student(), build_teacher()
    batch = build_batch(settings.batch_size)
    # One student per trainer configuration, all from the same initial weights.
    models = {name: copy.deepcopy(student) for name in ("plain", "live", "cached", "timm_task")}
    models["teacher"] = teacher
    times = {name: StepTimes() for name in TIMED_CONFIGURATIONS}
    with tempfile.TemporaryDirectory() as output_dir:
        for round_index in range(settings.rounds):
            # Rotated each round, so that no configuration always runs first or after another.
            shift = round_index % len(TIMED_CONFIGURATIONS)
            for configuration in TIMED_CONFIGURATIONS[shift:] + TIMED_CONFIGURATIONS[:shift]:
                measured = time_round(configuration, models, batch, settings, output_dir)
                times[configuration].extend(measured, skip=settings.warmup)
            print(
                f"round {round_index + 1}/{settings.rounds}: "
                + ", ".join(
                    f"{name} {statistics.median(times[name].wall):.1f} ms" for name in times
                ),
                file=sys.stderr,
            )
    return times


# ---- operators ----

OperatorKey = tuple[str, str]  # (ATen operator, its input shapes)


class OperatorProfile:
    """ATen calls per step and their self CPU time, from ``torch.profiler``."""

    def __init__(self) -> None:
        self.calls: dict[OperatorKey, float] = {}
        self.self_cpu_ms: dict[OperatorKey, float] = {}

    def add(self, profiler: torch.profiler.profile, steps: int) -> None:
        """Add a profile of one or more steps, as per-step averages over ``steps``."""
        for event in profiler.key_averages(group_by_input_shape=True):
            if event.key.startswith("aten::"):
                key = (event.key, str(event.input_shapes))
                self.calls[key] = self.calls.get(key, 0.0) + event.count / steps
                self.self_cpu_ms[key] = (
                    self.self_cpu_ms.get(key, 0.0) + event.self_cpu_time_total / 1e3 / steps
                )


def cpu_profiler() -> torch.profiler.profile:
    return torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
    )


class ProfiledSteps(TrainerCallback):
    """Profiles each optimizer step after ``warmup``, ``on_step_begin`` to ``on_step_end``
    (the batch fetches between steps stay out, as in the timed window)."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.profile = OperatorProfile()
        self._profiler: torch.profiler.profile | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step >= self.warmup:
            self._profiler = cpu_profiler()
            self._profiler.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            self.profile.add(self._profiler, self.steps)
            self._profiler = None


def profile_operators(settings: Settings) -> dict[str, OperatorProfile]:
    """One profiled run per configuration: which ATen calls each step makes."""
    student, teacher = build_student(), build_teacher()
    batch = build_batch(settings.batch_size)
    profiles: dict[str, OperatorProfile] = {}
    with tempfile.TemporaryDirectory() as output_dir:
        for configuration in ("plain", "live", "cached"):
            callback = ProfiledSteps(settings.warmup, settings.steps)
            trainer = build_trainer(
                configuration,
                copy.deepcopy(student),
                teacher,
                batch,
                settings,
                output_dir,
                [callback],
            )
            trainer.train()
            profiles[configuration] = callback.profile
    time_teacher_forward(teacher, batch, settings.warmup)
    profiles["teacher_fwd"] = OperatorProfile()
    with cpu_profiler() as profiler:
        time_teacher_forward(teacher, batch, settings.steps)
    profiles["teacher_fwd"].add(profiler, settings.steps)
    return profiles


def added_operators(
    profiles: dict[str, OperatorProfile], configuration: str, references: Sequence[str]
) -> list[dict[str, Any]]:
    """The ATen calls per step of ``configuration`` beyond those of the ``references``
    together, each with its estimated self CPU time (extra calls x mean time per call)."""
    measured = profiles[configuration]
    added = []
    for key, calls in measured.calls.items():
        extra = calls - sum(profiles[name].calls.get(key, 0.0) for name in references)
        if extra > 0:
            per_call = measured.self_cpu_ms[key] / calls
            added.append(
                {
                    "operator": key[0],
                    "input_shapes": key[1],
                    "calls": round(extra, 2),
                    "self_cpu_ms": round(extra * per_call, 3),
                }
            )
    return sorted(added, key=lambda entry: -entry["self_cpu_ms"])


# ---- memory ----


def resident_kib(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process, KiB."""
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, flags=re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}: peak memory needs Linux")
    return int(match.group(1))


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def measure_peak_memory_here(configuration: str, settings: Settings) -> dict[str, float]:
    """Run ``configuration`` in this process; its peak RSS above the post-import RSS, MiB."""
    torch.set_num_threads(settings.threads)
    baseline_kib = resident_kib("VmRSS")
    batch = build_batch(settings.batch_size)
    student = build_student() if configuration != "teacher_fwd" else None
    teacher = build_teacher() if configuration != "plain" else None
    teacher_weights = model_bytes(teacher) / MIB if teacher is not None else 0.0
    with tempfile.TemporaryDirectory() as output_dir:
        if configuration == "teacher_fwd":
            reset_peak_rss()
            time_teacher_forward(teacher, batch, settings.warmup + settings.steps)
        else:
            trainer = build_trainer(configuration, student, teacher, batch, settings, output_dir)
            if configuration == "cached":
                del teacher  # the cached run keeps only the logits
            reset_peak_rss()
            trainer.train()
    return {
        "peak_mb": (resident_kib("VmHWM") - baseline_kib) / 1024,
        "teacher_weights_mb": teacher_weights,
    }


def model_bytes(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def measure_peak_memory(configuration: str, settings: Settings) -> dict[str, float]:
    """:func:`measure_peak_memory_here` in a fresh subprocess."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "MALLOC_MMAP_THRESHOLD_": MALLOC_MMAP_THRESHOLD,
    }
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-of",
        configuration,
        *settings_arguments(settings),
    ]
    completed = subprocess.run(
        command, env=environment, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"the {configuration} memory run failed ({completed.returncode}):\n"
            f"{completed.stderr[-4000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def settings_arguments(settings: Settings) -> list[str]:
    return [
        "--method",
        settings.method,
        "--batch-size",
        str(settings.batch_size),
        "--threads",
        str(settings.threads),
        "--rounds",
        str(settings.rounds),
        "--steps",
        str(settings.steps),
        "--warmup",
        str(settings.warmup),
    ]


# ---- results ----


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    first, median, third = statistics.quantiles(values, n=4, method="inclusive")
    return first, median, third


def summarise(
    times: dict[str, StepTimes],
    memory: dict[str, dict[str, float]],
    profiles: dict[str, OperatorProfile],
    settings: Settings,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, measured in times.items():
        first, median, third = quartiles(measured.wall)
        results[f"{name}_ms"] = round(median, 2)
        results[f"{name}_iqr_ms"] = [round(first, 2), round(third, 2)]
        results[f"{name}_cpu_ms"] = round(statistics.median(measured.cpu), 2)
        results[f"{name}_phases_cpu_ms"] = {
            phase: round(statistics.median(values), 2)
            for phase, values in measured.phases_cpu.items()
        }
        results[f"{name}_samples"] = len(measured.wall)
    for name in CONFIGURATIONS:
        results[f"{name}_peak_mb"] = round(memory[name]["peak_mb"], 1)
    results["teacher_weights_mb"] = round(memory["live"]["teacher_weights_mb"], 1)
    results["live_added_operators"] = added_operators(profiles, "live", ["plain", "teacher_fwd"])
    results["cached_added_operators"] = added_operators(profiles, "cached", ["plain"])
    results["targets"] = {
        **time_targets(results, "ms"),
        **time_targets(results, "cpu_ms"),
        **memory_target(results),
    }
    results["setup"] = {
        "student": f"timm {STUDENT} {STUDENT_KWARGS}",
        "teacher": f"timm {TEACHER} at {IMAGE_SIZE}x{IMAGE_SIZE}",
        "classes": NUM_CLASSES,
        "method": settings.method,
        "batch_size": settings.batch_size,
        "rounds": settings.rounds,
        "steps_per_round": settings.steps,
        "warmup_steps_per_round": settings.warmup,
    }
    results["machine"] = machine_description(settings.threads)
    return results


def time_targets(results: dict[str, Any], unit: str) -> dict[str, Any]:
    """``live <= 1.05 (plain + teacher_fwd)`` and ``cached <= 1.05 plain`` for the medians
    in ``unit`` (``ms``: wall clock, ``cpu_ms``: thread CPU time); when timm's task was
    timed, its ratio to the same floor and hf-kd's live step over timm's."""
    live_reference = results[f"plain_{unit}"] + results[f"teacher_fwd_{unit}"]
    cached_reference = results[f"plain_{unit}"]
    peer = {}
    if f"timm_task_{unit}" in results:
        peer = {
            f"timm_task_{unit}_ratio": round(results[f"timm_task_{unit}"] / live_reference, 3),
            f"live_vs_timm_task_{unit}": round(
                results[f"live_{unit}"] / results[f"timm_task_{unit}"], 3
            ),
        }
    return {
        **peer,
        f"live_{unit}_limit": round(TIME_TARGET * live_reference, 2),
        f"live_{unit}_ratio": round(results[f"live_{unit}"] / live_reference, 3),
        f"live_{unit}_met": results[f"live_{unit}"] <= TIME_TARGET * live_reference,
        f"cached_{unit}_limit": round(TIME_TARGET * cached_reference, 2),
        f"cached_{unit}_ratio": round(results[f"cached_{unit}"] / cached_reference, 3),
        f"cached_{unit}_met": results[f"cached_{unit}"] <= TIME_TARGET * cached_reference,
    }


def memory_target(results: dict[str, Any]) -> dict[str, Any]:
    """``live peak <= 1.10 (plain peak + teacher weights)``."""
    limit = MEMORY_TARGET * (results["plain_peak_mb"] + results["teacher_weights_mb"])
    return {
        "live_peak_mb_limit": round(limit, 1),
        "live_peak_mb_met": results["live_peak_mb"] <= limit,
    }


def machine_load(machine: dict[str, Any]) -> str:
    """The load the run saw, as the report states it; older records did not measure it."""
    if "load_average" not in machine:
        return "load not recorded"
    one, five, fifteen = machine["load_average"]
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} over 1/5/15 min at the end"


def machine_description(threads: int) -> dict[str, Any]:
    return {
        "device": "cpu",
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        # 1/5/15-minute load at the end of the run, this benchmark's own thread included
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), flags=re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()


def markdown_section(results: dict[str, Any], command: str) -> str:
    machine, targets, setup = results["machine"], results["targets"], results["setup"]

    def verdict(name: str) -> str:
        return "met" if targets[f"{name}_met"] else "**missed**"

    def time_target(name: str) -> str:
        return (
            f"<= {targets[f'{name}_ms_limit']:.1f}: {verdict(f'{name}_ms')}, ratio "
            f"{targets[f'{name}_ms_ratio']:.3f} (CPU <= {targets[f'{name}_cpu_ms_limit']:.1f}: "
            f"{verdict(f'{name}_cpu_ms')}, ratio {targets[f'{name}_cpu_ms_ratio']:.3f})"
        )

    def row(name: str, target: str = "", memory_target: str = "") -> str:
        low, high = results[f"{name}_iqr_ms"]
        peak = results.get(f"{name}_peak_mb")
        return (
            f"| {ROW_LABELS[name]} | {results[f'{name}_ms']:.1f} | {low:.1f} - {high:.1f} | "
            f"{results[f'{name}_cpu_ms']:.1f} | {target} | "
            f"{'not measured' if peak is None else f'{peak:.0f}'} | {memory_target} |"
        )

    def peer_ratio(unit: str) -> str:
        return (
            f"{targets[f'timm_task_{unit}_ratio']:.3f} of the floor; hf-kd live / timm "
            f"{targets[f'live_vs_timm_task_{unit}']:.3f}"
        )

    live_memory = f"<= {targets['live_peak_mb_limit']:.0f}: {verdict('live_peak_mb')}"
    lines = [
        RESULTS_HEADING,
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine['cpu']}, {machine['cpu_count']} cores ({machine_load(machine)}), "
        f"{machine['threads']} torch thread(s); torch {machine['torch']}, transformers "
        f"{machine['transformers']}, timm {machine['timm']}; {machine['date']}.",
        "",
        f"Student {setup['student']}, teacher {setup['teacher']} "
        f"({results['teacher_weights_mb']:.1f} MiB of weights), {setup['classes']} classes, "
        f"batch {setup['batch_size']}, method `{setup['method']}`. Medians of "
        f"{results['plain_samples']} optimizer steps per configuration ({setup['rounds']} "
        "interleaved rounds, warm-up steps dropped): wall clock with its interquartile range, "
        "and the main thread's CPU time, which other jobs on the shared cores do not inflate. "
        "Peak: RSS high-water mark above the post-import RSS, each configuration in its own "
        "process. Method: the docstring of `benchmarks/bench_trainer.py`.",
        "",
        "Targets: live <= 1.05 (plain + teacher forward), cached <= 1.05 plain (ratio: the "
        "measured time over the reference in brackets), live peak <= 1.10 (plain peak + "
        "teacher weights).",
        "",
        "| configuration | step ms | IQR ms | CPU ms | time target | peak MiB | memory target |",
        "|---|---|---|---|---|---|---|",
        row("plain"),
        row("live", time_target("live"), live_memory),
        row("cached", time_target("cached")),
        row("teacher_fwd"),
        row("timm_task", f"{peer_ratio('ms')} (CPU: {peer_ratio('cpu_ms')})"),
        "",
        "(e) is timm 1.0's own distillation step (`timm.task.LogitDistillationTask`, KD at "
        "the same temperature and weights) on the same timm student, teacher and batch, "
        "timed in the same rounds, with the Trainer step's fused AdamW, gradient clipping and "
        "`zero_grad`; its ratio is to the same floor as (b), plain + teacher forward. "
        "`trainer.json`: `timm_task_ms`, `targets.timm_task_ms_ratio`, "
        "`targets.live_vs_timm_task_ms`.",
        "",
        "Where the CPU time of a step goes (medians per phase, thread CPU ms; the phases' "
        "medians need not add up to the step's). The plain `Trainer`'s student forward "
        "includes its cross-entropy; the distillation trainer computes CE and the "
        "distillation loss after the forwards, in the third column.",
        "",
        "| configuration | " + " | ".join(PHASES) + " |",
        "|---|" + "---|" * len(PHASES),
        *(
            f"| {label} | "
            + " | ".join(f"{results[f'{name}_phases_cpu_ms'][phase]:.1f}" for phase in PHASES)
            + " |"
            for name, label in ROW_LABELS.items()
        ),
        "",
        *added_operators_lines(results),
    ]
    return "\n".join(lines)


def added_operators_lines(results: dict[str, Any], shown: int = 8) -> list[str]:
    """What distillation adds to a step, by ATen call, from ``torch.profiler``."""
    live, cached = results["live_added_operators"], results["cached_added_operators"]

    def total(added: list[dict[str, Any]], key: str) -> float:
        return sum(entry[key] for entry in added)

    return [
        "ATen calls per step that distillation adds (`torch.profiler`, one profiled run per "
        "configuration; call counts are exact, self CPU time is estimated as extra calls x "
        "mean time per call): the live step beyond plain + teacher forward makes "
        f"{total(live, 'calls'):.0f} more calls, {total(live, 'self_cpu_ms'):.2f} ms; the "
        f"cached step beyond plain {total(cached, 'calls'):.0f} calls, "
        f"{total(cached, 'self_cpu_ms'):.2f} ms. The costliest added calls of the live step:",
        "",
        "| ATen operator | input shapes | calls | self CPU ms |",
        "|---|---|---|---|",
        *(
            f"| `{entry['operator']}` | `{entry['input_shapes']}` | {entry['calls']:g} | "
            f"{entry['self_cpu_ms']:.3f} |"
            for entry in live[:shown]
        ),
        "",
    ]


def write_results(
    results: dict[str, Any], json_path: Path, markdown_path: Path, command: str
) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    existing = markdown_path.read_text() if markdown_path.exists() else "# Benchmark results\n"
    markdown_path.write_text(
        replace_section(existing, RESULTS_HEADING, markdown_section(results, command))
    )


# ---- command line ----


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="kd", help="distillation loss (hf_kd.losses)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="dropped steps per round")
    parser.add_argument(
        "--json", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "trainer.json"
    )
    parser.add_argument("--markdown", type=Path, default=REPO_ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument(
        "--memory-of", choices=CONFIGURATIONS, help=argparse.SUPPRESS
    )  # internal: the subprocess measuring one configuration's peak memory
    arguments = parser.parse_args(argv)
    for name in ("batch_size", "threads", "rounds", "steps"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if arguments.warmup < 1:
        parser.error("--warmup must be >= 1: the first step allocates the optimizer state")
    return arguments


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    arguments = parse_arguments(argv)
    settings = Settings(
        method=arguments.method,
        batch_size=arguments.batch_size,
        threads=arguments.threads,
        rounds=arguments.rounds,
        steps=arguments.steps,
        warmup=arguments.warmup,
    )
    transformers.logging.set_verbosity_error()
    if arguments.memory_of is not None:
        print(json.dumps(measure_peak_memory_here(arguments.memory_of, settings)))
        return None
    torch.set_num_threads(settings.threads)
    memory = {name: measure_peak_memory(name, settings) for name in CONFIGURATIONS}
    times = measure_step_times(settings)
    profiles = profile_operators(settings)
    results = summarise(times, memory, profiles, settings)
    command = "python benchmarks/bench_trainer.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    write_results(results, arguments.json, arguments.markdown, command.strip())
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
