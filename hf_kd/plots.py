"""Training curves of a distillation run, drawn from a ``Trainer``'s ``state.log_history``.

Training log entries (those with a ``loss`` key) carry ``loss``, ``ce_loss``, ``kd_loss`` and
each term of the distillation loss; evaluation entries carry ``eval_loss`` and accuracies.
The figure has two panels over the global step: every loss (training, and evaluation CE),
and every evaluation accuracy. Each evaluation curve is labelled with its split: the
Trainer evaluates its ``eval_dataset`` (the validation split) during training; evaluations
logged after the end-of-training summary are on ``final_eval_split`` (e.g. the test split).
It is rendered with matplotlib's Agg canvas, without pyplot, so it works headless and leaves
no global figure state behind.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

NON_LOSS_TRAIN_KEYS = frozenset({"epoch", "step", "learning_rate", "grad_norm", "num_tokens"})
TRAINING_EVAL_SPLIT = "validation"
# the key of the Trainer's end-of-training summary entry
TRAIN_SUMMARY_KEY = "train_runtime"


def training_curves(
    log_history: Iterable[Mapping[str, object]],
    final_eval_split: str = TRAINING_EVAL_SPLIT,
    training_eval_split: str = TRAINING_EVAL_SPLIT,
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """Split ``log_history`` into ``(loss_curves, accuracy_curves)``: name -> [(step, value)].

    Loss curves: every numeric key of the training entries except bookkeeping ones, plus
    ``eval_loss``. Accuracy curves: every ``eval_*accuracy*`` key. Evaluation curves are
    named with their split, ``eval_loss (validation)``: ``training_eval_split`` (the
    Trainer's ``eval_dataset``, by default the validation split) up to the last
    end-of-training summary, ``final_eval_split`` after it. Entries without a ``step`` and
    non-numeric values are skipped.
    """
    entries = list(log_history)
    summaries = [index for index, entry in enumerate(entries) if TRAIN_SUMMARY_KEY in entry]
    end_of_training = summaries[-1] if summaries else len(entries)
    losses: dict[str, list[tuple[int, float]]] = {}
    accuracies: dict[str, list[tuple[int, float]]] = {}
    for index, entry in enumerate(entries):
        step = entry.get("step")
        if not isinstance(step, int):
            continue
        split = training_eval_split if index < end_of_training else final_eval_split
        for key, value in entry.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if "loss" in entry and key not in NON_LOSS_TRAIN_KEYS:
                losses.setdefault(key, []).append((step, float(value)))
            elif key == "eval_loss":
                losses.setdefault(f"{key} ({split})", []).append((step, float(value)))
            elif key.startswith("eval_") and "accuracy" in key:
                accuracies.setdefault(f"{key} ({split})", []).append((step, float(value)))
    return losses, accuracies


def plot_training_curves(
    log_history: Iterable[Mapping[str, object]],
    path: str | Path,
    *,
    final_eval_split: str = TRAINING_EVAL_SPLIT,
    training_eval_split: str = TRAINING_EVAL_SPLIT,
) -> Path | None:
    """Write the training-curves PNG to ``path``; ``None`` (nothing written) if nothing logged.

    ``final_eval_split``: the split of the evaluations logged after training ended;
    ``training_eval_split``: the split evaluated during training.
    """
    losses, accuracies = training_curves(log_history, final_eval_split, training_eval_split)
    if not losses and not accuracies:
        logger.info("no losses or accuracies in the log history: no training-curves plot")
        return None
    figure = Figure(figsize=(11, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    _draw(loss_axes, losses, title="Losses", ylabel="loss")
    _draw(accuracy_axes, accuracies, title="Evaluation accuracy", ylabel="accuracy")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _draw(
    axes: Axes, curves: dict[str, list[tuple[int, float]]], *, title: str, ylabel: str
) -> None:
    for name, points in sorted(curves.items()):
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, marker="o" if len(points) < 20 else None, label=name)
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axes.transAxes)
