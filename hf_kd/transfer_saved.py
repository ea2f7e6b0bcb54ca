"""Linear-probe transfer of a saved model (Hub id or folder), its results written beside it.

What ``examples/transfer_eval.py`` and the CIFAR-100 benchmark's transfer stage both do for
one model and one dataset: :meth:`SavedModel.load` loads the model and its own preprocessing
(failing early on a missing model), :meth:`SavedModel.transfer` runs the protocol of
:func:`hf_kd.transfer.evaluate_transfer`, then adds the result to ``transfer_results.json``
and to the model card (its model-index and results table) in an output folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from hf_kd.model_card import write_card_with_transfer_result
from hf_kd.models import load_classifier, load_image_processor, preprocessing_for
from hf_kd.preprocessing import ImagePreprocessing
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


@dataclass(frozen=True)
class SavedModel:
    """A saved classifier, loaded with the input size and normalisation it expects."""

    name_or_path: str
    model: PreTrainedModel
    preprocessing: ImagePreprocessing

    @classmethod
    def load(
        cls,
        name_or_path: str | Path,
        *,
        device: torch.device | str | None = None,
        trust_remote_code: bool = False,
    ) -> SavedModel:
        """The model (on ``device``, default CUDA when available) and its preprocessing: its
        image processor when it has one, else its config's
        (:func:`hf_kd.models.preprocessing_for`)."""
        name_or_path = str(name_or_path)
        model = load_classifier(name_or_path, trust_remote_code=trust_remote_code)
        model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        try:
            image_processor = load_image_processor(
                name_or_path, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError):
            image_processor = None
        return cls(name_or_path, model, preprocessing_for(model, image_processor))

    def transfer(
        self,
        data: TransferData,
        output_dir: str | Path,
        *,
        probe_config: LinearProbeConfig | None = None,
        batch_size: int = 128,
        disable_tqdm: bool = False,
    ) -> SavedTransfer:
        """Probe the frozen model on ``data``, then write the result and the card with it to
        ``output_dir`` (which may be the model's own folder)."""
        result = evaluate_transfer(
            self.model,
            data,
            self.preprocessing,
            probe_config=probe_config,
            batch_size=batch_size,
            disable_tqdm=disable_tqdm,
        )
        results_file = write_transfer_results(output_dir, result)
        card_files = write_card_with_transfer_result(self.name_or_path, result, output_dir)
        return SavedTransfer(result, [results_file.name, *card_files])
