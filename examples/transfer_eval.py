"""Linear-probe transfer evaluation of a (distilled) image classifier.

The representation-transfer protocol of CRD and MCLD: freeze the model, compute its
penultimate pooled features once, train a linear classifier on the target train split and
report top-1 accuracy on the target evaluation split (see ``hf_kd.transfer``).

    python examples/transfer_eval.py --model_name_or_path outputs/distill_vit --dataset_name stl10
    python examples/transfer_eval.py --model_name_or_path outputs/distill_vit \\
        --dataset_name tiny-imagenet --push_to_hub --hub_model_id me/vit-tiny-mcld

``--dataset_name``: ``stl10`` (``tanganke/stl10``, eval split ``test``), ``tiny-imagenet``
(``zh-plus/tiny-imagenet``, eval split ``valid``), any Hub dataset id or a local dataset
folder. Writes ``transfer_results.json`` (one entry per dataset) and, when the model has an
hf-kd card, the re-rendered ``README.md`` with the result in its model-index, to
``--output_dir`` (default: the model's folder when it is local). With ``--push_to_hub`` a
full student folder is pushed as is; otherwise only the results and card files are pushed
to the model's repo (or ``--hub_model_id``).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from hf_kd.hub import push_files_to_hub, push_student_to_hub
from hf_kd.transfer import LinearProbeConfig, TransferResult, load_transfer_data
from hf_kd.transfer_saved import SavedModel

logger = logging.getLogger(__name__)


@dataclass
class TransferArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "The frozen model: a local folder (an hf-kd student) or a Hub id, read as "
            "hf_kd.models.load_classifier reads it."
        }
    )
    dataset_name: str = field(
        metadata={
            "help": "'stl10', 'tiny-imagenet', a Hub dataset id or a local dataset folder "
            "(anything datasets.load_dataset reads)."
        }
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where transfer_results.json and the updated card go. Default: the model "
            "folder when it is local, else outputs/transfer_eval/<model name>."
        },
    )
    train_split: str = field(default="train", metadata={"help": "The split the probe trains on."})
    eval_split: str | None = field(
        default=None,
        metadata={
            "help": "The split accuracy is reported on. Default: the dataset's known one "
            "(Tiny-ImageNet: valid), else the first of test, valid, validation."
        },
    )
    image_column_name: str | None = field(
        default=None, metadata={"help": "The image column (default: the Image feature)."}
    )
    label_column_name: str | None = field(
        default=None, metadata={"help": "The label column (default: the ClassLabel feature)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Probe on a seeded random subset of this many images."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on a seeded random subset of this many images."}
    )
    feature_batch_size: int = field(
        default=128, metadata={"help": "Images per forward pass when computing features."}
    )
    probe_epochs: int = field(default=30, metadata={"help": "Linear-probe epochs (SGD)."})
    probe_learning_rate: float = field(
        default=0.1, metadata={"help": "Linear-probe peak learning rate (cosine decay to 0)."}
    )
    probe_weight_decay: float = field(default=5e-4, metadata={"help": "Linear-probe weight decay."})
    probe_batch_size: int = field(default=256, metadata={"help": "Linear-probe batch size."})
    seed: int = field(default=0, metadata={"help": "Seed of subsets and probe shuffling."})
    device: str | None = field(
        default=None, metadata={"help": "Device for the features (default: cuda if available)."}
    )
    disable_tqdm: bool = field(
        default=False,
        metadata={"help": "Hide the progress bars of feature extraction and probe training."},
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Push the results to the Hub."})
    hub_model_id: str | None = field(
        default=None,
        metadata={"help": "The repo to push to (default: --model_name_or_path when a Hub id)."},
    )
    hub_token: str | None = field(default=None, metadata={"help": "Hub token for the push."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the Hub (off: safe)."}
    )

    def __post_init__(self) -> None:
        is_local = Path(self.model_name_or_path).is_dir()
        if self.output_dir is None:
            self.output_dir = (
                self.model_name_or_path
                if is_local
                else str(Path("outputs/transfer_eval") / Path(self.model_name_or_path).name)
            )
        if self.push_to_hub and self.hub_model_id is None:
            if is_local:
                raise ValueError("--push_to_hub with a local model needs --hub_model_id")
            self.hub_model_id = self.model_name_or_path


def main(argv: list[str] | None = None) -> TransferResult:
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO
    )
    (args,) = HfArgumentParser(TransferArguments).parse_args_into_dataclasses(args=argv)
    model = SavedModel.load(
        args.model_name_or_path, device=args.device, trust_remote_code=args.trust_remote_code
    )
    data = load_transfer_data(
        args.dataset_name,
        train_split=args.train_split,
        eval_split=args.eval_split,
        image_column=args.image_column_name,
        label_column=args.label_column_name,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        seed=args.seed,
    )
    probe_config = LinearProbeConfig(
        epochs=args.probe_epochs,
        learning_rate=args.probe_learning_rate,
        weight_decay=args.probe_weight_decay,
        batch_size=args.probe_batch_size,
        seed=args.seed,
    )
    saved = model.transfer(
        data,
        args.output_dir,
        probe_config=probe_config,
        batch_size=args.feature_batch_size,
        disable_tqdm=args.disable_tqdm,
    )
    result = saved.result
    logger.info("%s linear-probe top-1: %.2f%%", data.display_name, 100 * result.top1_accuracy)
    print(json.dumps(result.to_dict(), indent=2))
    if args.push_to_hub:
        if (Path(args.output_dir) / "config.json").is_file():
            url = push_student_to_hub(
                args.output_dir,
                args.hub_model_id,
                token=args.hub_token,
                commit_message=f"Add {data.display_name} transfer results",
            )
        else:
            url = push_files_to_hub(
                args.output_dir,
                args.hub_model_id,
                saved.files,
                token=args.hub_token,
                commit_message=f"Add {data.display_name} transfer results",
            )
        logger.info("pushed the transfer results: %s", url)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
