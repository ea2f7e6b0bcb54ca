"""The transfer stage: the linear probe of :mod:`hf_kd.transfer` (the protocol of
``examples/transfer_eval.py``) for the teacher and every kept student, on each transfer
dataset, at the model's own input size.

Each (model, dataset) is one probe: features computed once per model and dataset, one
record written at once under ``<results_dir>/transfer_runs/`` (a rerun skips it), the result
added to the model's ``transfer_results.json`` and its card's model-index
(:class:`hf_kd.transfer_saved.SavedModel`). ``transfer.json`` gathers the records (CPU tier;
``transfer_full*`` for the full tier).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.cifar100.config import METHODS, TierConfig
from benchmarks.cifar100.records import (
    describe_device,
    library_versions,
    load_records,
    write_atomically,
)
from hf_kd.transfer import LinearProbeConfig, load_transfer_data, read_transfer_results
from hf_kd.transfer_saved import SavedModel

logger = logging.getLogger("benchmarks.cifar100")

# the methods compared on transfer: the teacher, the CE-only student and the six methods
TRANSFER_METHODS = ("teacher", *(spec.name for spec in METHODS))


def dataset_slug(dataset: str) -> str:
    """A file-name-safe name of a dataset (alias, Hub id or folder)."""
    name = Path(dataset.rstrip("/")).name if Path(dataset).exists() else dataset
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def transfer_candidates(accuracy_records: dict[str, dict]) -> list[dict]:
    """The accuracy records of the models whose transfer is measured: the teacher and the
    students of :data:`TRANSFER_METHODS` that were kept (have a ``model_dir``)."""
    candidates = []
    for run, record in accuracy_records.items():
        method = "teacher" if run == "teacher" else record.get("name")
        if method in TRANSFER_METHODS and record.get("model_dir"):
            candidates.append({**record, "method": method})
    order = {method: index for index, method in enumerate(TRANSFER_METHODS)}
    return sorted(candidates, key=lambda record: (order[record["method"]], record.get("seed", 0)))


def is_probed(record_file: Path, folder: Path) -> bool:
    """Whether the probe of ``record_file`` is finished: recorded, and its result still in
    the model folder's ``transfer_results.json`` (a folder kept again has lost it)."""
    if not record_file.exists():
        return False
    dataset = json.loads(record_file.read_text())["dataset_source"]
    return any(result.dataset == dataset for result in read_transfer_results(folder))


def run_transfer(
    tier: TierConfig,
    results_dir: Path,
    datasets: Sequence[str],
    *,
    probe_config: LinearProbeConfig | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> list[dict]:
    """Probe every kept model on every dataset not yet recorded; all the records."""
    accuracy_runs = results_dir / f"{tier.stem}_runs"
    runs_dir = results_dir / f"{tier.transfer_stem}_runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    candidates = transfer_candidates(load_records(accuracy_runs))
    if not candidates:
        raise FileNotFoundError(
            f"no kept model in {accuracy_runs}: run the accuracy stage first (it keeps the "
            "teacher and every student as a Hub-ready folder)"
        )
    for dataset in datasets:
        data = None
        for candidate in candidates:
            path = runs_dir / f"{candidate['run']}__{dataset_slug(dataset)}.json"
            if is_probed(path, Path(candidate["model_dir"])):
                continue
            if data is None:  # loaded once per dataset, only when a probe is missing
                data = load_transfer_data(
                    dataset,
                    max_train_samples=max_train_samples,
                    max_eval_samples=max_eval_samples,
                )
            started = time.perf_counter()
            folder = candidate["model_dir"]
            saved = SavedModel.load(folder).transfer(
                data, folder, probe_config=probe_config, disable_tqdm=True
            )
            result = saved.result
            record = {
                "method": candidate["method"],
                "seed": candidate.get("seed", 0),
                "run": candidate["run"],
                "dataset": dataset_slug(dataset),
                "dataset_source": result.dataset,
                "top1_accuracy": result.top1_accuracy,
                "cifar100_top1": candidate["top1"] / 100,
                "model_dir": folder,
                **{
                    key: value
                    for key, value in result.to_dict().items()
                    if key not in ("dataset", "top1_accuracy")
                },
                "wall_time_s": time.perf_counter() - started,
                "device": describe_device(),
                "versions": library_versions(),
                "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            write_atomically(path, json.dumps(record, indent=2) + "\n")
            logger.info(
                "%s on %s: linear-probe top-1 %.2f%% in %.0f s",
                candidate["run"],
                record["dataset"],
                100 * result.top1_accuracy,
                record["wall_time_s"],
            )
    records = [json.loads(path.read_text()) for path in sorted(runs_dir.glob("*.json"))]
    payload = json.dumps({"records": records}, indent=2) + "\n"
    write_atomically(results_dir / f"{tier.transfer_stem}.json", payload)
    return records
