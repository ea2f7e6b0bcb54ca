"""Linear-probe transfer of a saved model (Hub id or folder), its results written beside it.

What ``examples/transfer_eval.py`` and the CIFAR-100 benchmark's transfer stage both do for
one model and one dataset: load the model and its own preprocessing, run the protocol of
:func:`hf_kd.transfer.evaluate_transfer`, then add the result to ``transfer_results.json``
and to the model card (its model-index and results table) in ``output_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from hf_kd.model_card import write_card_with_transfer_result
from hf_kd.models import load_classifier, load_image_processor, preprocessing_for
from hf_kd.transfer import (
    LinearProbeConfig,
    TransferData,
    TransferResult,
    evaluate_transfer,
    write_transfer_results,
)


@dataclass(frozen=True)
class SavedTransfer:
    """A transfer result and the files it wrote (``transfer_results.json`` and the card's)."""

    result: TransferResult
    files: list[str]


def transfer_saved_model(
    model_name_or_path: str | Path,
    data: TransferData,
    output_dir: str | Path,
    *,
    probe_config: LinearProbeConfig | None = None,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
    disable_tqdm: bool = False,
) -> SavedTransfer:
    """Probe the saved model on ``data`` at its own input size and normalisation (its image
    processor when it has one, else its config's), then write the result and the card with
    it to ``output_dir`` (which may be the model's own folder)."""
    model = load_classifier(str(model_name_or_path), trust_remote_code=trust_remote_code)
    model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        image_processor = load_image_processor(
            str(model_name_or_path), trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError):
        image_processor = None
    result = evaluate_transfer(
        model,
        data,
        preprocessing_for(model, image_processor),
        probe_config=probe_config,
        batch_size=batch_size,
        disable_tqdm=disable_tqdm,
    )
    results_file = write_transfer_results(output_dir, result)
    card_files = write_card_with_transfer_result(model_name_or_path, result, output_dir)
    return SavedTransfer(result, [results_file.name, *card_files])
