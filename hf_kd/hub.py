"""Export a distilled student in the layout the Hub ecosystem loads, and push it.

A transformers student is saved with ``save_pretrained`` (plus ``preprocessor_config.json``).
A timm student (``TimmWrapperForImageClassification``) needs a folder that loads both with
``AutoModelForImageClassification.from_pretrained`` and ``timm.create_model("hf-hub:...")``,
which neither library writes on its own (timm 1.0.31, transformers 5.23):

* ``save_pretrained`` writes weights under ``timm_model.*`` keys and a config without
  ``pretrained_cfg``; timm then reads the whole config as a legacy ``pretrained_cfg`` and
  fails (``PretrainedCfg got an unexpected keyword argument 'architectures'``), and its
  strict state-dict load would reject the prefixed keys anyway.
* timm's ``save_for_hf`` writes plain keys and a ``pretrained_cfg``, but records
  ``num_classes`` in ``model_args``; transformers passes ``num_classes=num_labels`` *and*
  ``**model_args`` to ``timm.create_model`` and fails ("got multiple values for keyword
  argument 'num_classes'").

:func:`save_timm_student` writes timm's export (plain timm keys in ``model.safetensors``; a
``pretrained_cfg`` holding the student's real preprocessing, which is also what
``TimmWrapperImageProcessor`` reads), drops ``num_classes`` from ``model_args`` (timm takes
it from the root ``num_classes``) and merges in the transformers fields (``architectures``,
``model_type: timm_wrapper``, labels). transformers adds the ``timm_model.`` prefix itself
when loading (its ``timm_wrapper`` key mapping), so both loaders get identical weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import HfApi
from timm.models import save_for_hf
from transformers import BaseImageProcessor, PreTrainedModel
from transformers.models.timm_wrapper import TimmWrapperImageProcessor

from hf_kd.image_processors import (
    image_processor_for,
    is_timm_model,
    preprocessing_from_image_processor,
    timm_data_config,
)
from hf_kd.model_card import read_student_card, write_model_card
from hf_kd.preprocessing import ImagePreprocessing

logger = logging.getLogger(__name__)

# Trainer outputs that do not belong in a published model repo: intermediate checkpoints
# (optimizer state), TensorBoard runs, and the pickled TrainingArguments (the card records
# the training setup instead, and a published repo should hold no pickles).
PUSH_IGNORE_PATTERNS = ("checkpoint-*/", "runs/", "training_args.bin")


def save_student(
    model: PreTrainedModel,
    output_dir: str | Path,
    *,
    image_processor: BaseImageProcessor | ImagePreprocessing | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and the student's preprocessing.

    ``image_processor`` is the student's preprocessing: a transformers image processor or an
    :class:`ImagePreprocessing` (turned into a generic ``ViTImageProcessor`` for a
    transformers student). A timm student keeps it in ``config.json``'s ``pretrained_cfg``
    (see :func:`save_timm_student`); a transformers student gets ``preprocessor_config.json``.
    The model card is written separately (:func:`hf_kd.model_card.write_model_card`).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if is_timm_model(model):
        save_timm_student(model, output_dir, data_config=_timm_data_config(image_processor))
        return output_dir
    model.save_pretrained(output_dir)
    if isinstance(image_processor, ImagePreprocessing):
        image_processor = image_processor_for(image_processor)
    if image_processor is not None:
        image_processor.save_pretrained(output_dir)
    return output_dir


def _timm_data_config(
    image_processor: BaseImageProcessor | ImagePreprocessing | None,
) -> Mapping[str, object] | None:
    if image_processor is None:
        return None
    if isinstance(image_processor, TimmWrapperImageProcessor):
        return image_processor.data_config  # keeps timm's crop settings as they are
    if isinstance(image_processor, BaseImageProcessor):
        image_processor = preprocessing_from_image_processor(image_processor)
    return timm_data_config(image_processor)


def save_timm_student(
    model: PreTrainedModel,
    output_dir: str | Path,
    *,
    data_config: Mapping[str, object] | None = None,
) -> Path:
    """Save a ``TimmWrapper`` student so that transformers and timm both load it.

    ``data_config`` is a timm data config (input size, mean, std, interpolation, crop; see
    :func:`hf_kd.image_processors.timm_data_config`) written into ``pretrained_cfg``; when
    ``None`` the ``pretrained_cfg`` already in the model's config is kept (a student loaded
    from an hf-kd or timm export), else the architecture's default.
    """
    if not is_timm_model(model):
        raise ValueError(
            f"save_timm_student needs a TimmWrapper model, got {type(model).__name__}; "
            "use save_student"
        )
    output_dir = Path(output_dir)
    if data_config is None:
        data_config = getattr(model.config, "pretrained_cfg", None)
    if data_config is None:
        logger.warning(
            "no preprocessing given for the timm student %s: its export carries the "
            "architecture's default input size and normalisation; pass image_processor",
            model.config.architecture,
        )
    labels = [model.config.id2label[index] for index in range(model.config.num_labels)]
    save_for_hf(
        model.timm_model,
        output_dir,
        model_config={"label_names": labels},
        safe_serialization=True,
        data_config=dict(data_config) if data_config is not None else None,
    )
    config_path = output_dir / "config.json"
    timm_config = json.loads(config_path.read_text(encoding="utf-8"))
    model_args = {**(model.config.model_args or {}), **timm_config.get("model_args", {})}
    # transformers passes num_classes itself; a second one in model_args is a TypeError
    model_args.pop("num_classes", None)
    config = model.config.to_dict()
    config.update(timm_config)
    config["model_args"] = model_args
    config["architectures"] = [type(model).__name__]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return output_dir


def push_student_to_hub(
    output_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload distilled student",
    revision: str | None = None,
) -> str:
    """Create ``repo_id`` if needed and upload the saved student folder as one commit.

    Uploads everything :func:`save_student` and the card writer put in ``output_dir``
    (weights, config, image processor, ``README.md``, ``training_curves.png``, results),
    minus :data:`PUSH_IGNORE_PATTERNS`. An hf-kd card is first re-rendered when its usage
    snippets name another repo than the one pushed to. Returns the commit URL.
    """
    output_dir = Path(output_dir)
    if not (output_dir / "config.json").is_file():
        raise ValueError(
            f"{output_dir} holds no config.json: save the student first (save_student)"
        )
    if not (output_dir / "README.md").is_file():
        logger.warning("%s has no README.md: the repo will have no model card", output_dir)
    api = HfApi(token=token, library_name="hf-kd")
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    _point_card_at(output_dir, repo_url.repo_id)
    commit = api.upload_folder(
        repo_id=repo_url.repo_id,
        folder_path=output_dir,
        commit_message=commit_message,
        revision=revision,
        ignore_patterns=list(PUSH_IGNORE_PATTERNS),
    )
    logger.info("pushed %s to %s", output_dir, commit.commit_url)
    return commit.commit_url


def _point_card_at(output_dir: Path, repo_id: str) -> None:
    """Re-render an hf-kd card whose usage snippets name another repo (or none)."""
    card = read_student_card(output_dir)
    if card is not None and card.repo_id != repo_id:
        write_model_card(dataclasses.replace(card, repo_id=repo_id), output_dir)


def push_files_to_hub(
    output_dir: str | Path,
    repo_id: str,
    filenames: list[str],
    *,
    token: str | None = None,
    commit_message: str = "Update model card",
) -> str:
    """Upload only ``filenames`` of ``output_dir`` to an existing repo; returns the commit URL.

    Used to add results (e.g. transfer evaluation) to a published student without
    re-uploading its weights.
    """
    missing = [name for name in filenames if not (Path(output_dir) / name).is_file()]
    if missing:
        raise ValueError(f"cannot push missing file(s) {missing} from {output_dir}")
    commit = HfApi(token=token, library_name="hf-kd").upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        allow_patterns=filenames,
        commit_message=commit_message,
    )
    return commit.commit_url
