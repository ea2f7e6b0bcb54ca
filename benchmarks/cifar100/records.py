"""One JSON record per finished run, written atomically (two benchmark processes may share
the folder), and what every record states about where it ran."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from benchmarks.cifar100.config import TierConfig
from benchmarks.documents import write_atomically

logger = logging.getLogger("benchmarks.cifar100")


def record_path(runs_dir: Path, run: str) -> Path:
    return runs_dir / f"{run}.json"


def write_record(runs_dir: Path, record: dict, tier: TierConfig, dataset_name: str) -> None:
    runs_dir.mkdir(parents=True, exist_ok=True)
    record = {
        **record,
        "tier": asdict(tier),
        "dataset": os.path.basename(dataset_name.rstrip("/")),
        "torch_threads": torch.get_num_threads(),
        "device": describe_device(),
        "versions": library_versions(),
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_atomically(record_path(runs_dir, record["run"]), json.dumps(record, indent=2) + "\n")
    logger.info("%s: top-1 %.2f%% in %.0f s", record["run"], record["top1"], record["wall_time_s"])


def library_versions() -> dict[str, str]:
    """The versions a run's numbers depend on (another torch may round differently)."""
    import timm
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
    }


def describe_device() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def load_records(runs_dir: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(runs_dir.glob("*.json"))}


def update_record(runs_dir: Path, run: str, **fields: Any) -> dict:
    """Add ``fields`` to a finished run's record (rewritten atomically); the record."""
    path = record_path(runs_dir, run)
    record = {**json.loads(path.read_text()), **fields}
    write_atomically(path, json.dumps(record, indent=2) + "\n")
    return record
