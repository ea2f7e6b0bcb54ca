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
import shutil
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors.torch import save_file
from timm.models._hub import save_config_for_hf
from torch import Tensor
from transformers import BaseImageProcessor, PreTrainedModel
from transformers.models.timm_wrapper import TimmWrapperImageProcessor

from hf_kd.model_card import (
    CARD_DATA_FILE,
    TRAINING_CURVES_FILE,
    read_student_card,
    write_model_card,
)
from hf_kd.models import image_processor_for, is_timm_model, preprocessing_for
from hf_kd.preprocessing import ImagePreprocessing
from hf_kd.transfer import TRANSFER_RESULTS_FILE

logger = logging.getLogger(__name__)

# What a published student repo holds: the model, its preprocessing, its card and results.
# An allow-list, because a training output_dir also holds what does not belong in a model
# repo: intermediate checkpoints (optimizer state), TensorBoard runs, the pickled
# TrainingArguments (the card records the training setup; a published repo should hold no
# pickles) and, in examples/distill_vit.py, the teacher trained for the run.
STUDENT_REPO_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "preprocessor_config.json",
    "README.md",
    CARD_DATA_FILE,
    TRAINING_CURVES_FILE,
    "all_results.json",
    "train_results.json",
    "eval_results.json",
    TRANSFER_RESULTS_FILE,
)


def save_student(
    model: PreTrainedModel,
    output_dir: str | Path,
    *,
    image_processor: BaseImageProcessor | ImagePreprocessing | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and the student's preprocessing.

    ``image_processor`` is the student's preprocessing: a transformers image processor or an
    :class:`ImagePreprocessing` (made into one by :func:`hf_kd.models.image_processor_for`).
    A timm student keeps it in ``config.json``'s ``pretrained_cfg`` (see
    :func:`save_timm_student`); a transformers student gets ``preprocessor_config.json``.
    ``state_dict`` replaces the model's own weights (a state dict gathered by FSDP or
    DeepSpeed). Weights are written as safetensors only. The model card is written
    separately (:func:`hf_kd.model_card.write_model_card`).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(image_processor, ImagePreprocessing):
        image_processor = image_processor_for(model, image_processor)
    if is_timm_model(model):
        data_config = None
        if image_processor is not None:
            data_config = _timm_image_processor(model, image_processor).data_config
        save_timm_student(model, output_dir, data_config=data_config, state_dict=state_dict)
        return output_dir
    model.save_pretrained(output_dir, state_dict=state_dict)
    if image_processor is not None:
        image_processor.save_pretrained(output_dir)
    return output_dir


def _timm_image_processor(
    model: PreTrainedModel, image_processor: BaseImageProcessor
) -> TimmWrapperImageProcessor:
    """The processor as timm's data config; a ``TimmWrapperImageProcessor`` is kept as it is
    (its crop settings included)."""
    if isinstance(image_processor, TimmWrapperImageProcessor):
        return image_processor
    return image_processor_for(model, preprocessing_for(model, image_processor))


def save_timm_student(
    model: PreTrainedModel,
    output_dir: str | Path,
    *,
    data_config: Mapping[str, object] | None = None,
    state_dict: Mapping[str, Tensor] | None = None,
) -> Path:
    """Save a ``TimmWrapper`` student so that transformers and timm both load it.

    ``data_config`` is a timm data config (input size, mean, std, interpolation, crop; e.g.
    the ``data_config`` of a ``TimmWrapperImageProcessor``) written into ``pretrained_cfg``;
    when ``None`` the ``pretrained_cfg`` already in the model's config is kept (a student
    loaded from an hf-kd or timm export, or given to :func:`hf_kd.models.image_processor_for`),
    else the architecture's default. ``state_dict`` (keys as in the wrapper's
    ``state_dict``, ``timm_model.*``) replaces the model's own weights.
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
    output_dir.mkdir(parents=True, exist_ok=True)
    # timm's own key names; weights made contiguous here (a channels_last student's are not,
    # and safetensors refuses them), so timm's save_for_hf is not used for the weights.
    weights = state_dict if state_dict is not None else model.state_dict()
    save_file(_timm_weights(weights), output_dir / "model.safetensors")
    config_path = output_dir / "config.json"
    save_config_for_hf(
        model.timm_model,
        config_path,
        model_config={"label_names": labels},
        data_config=dict(data_config) if data_config is not None else None,
    )
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


def _timm_weights(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm's own key names (no ``timm_model.`` prefix), contiguous for safetensors."""
    prefix = "timm_model."
    return {
        name.removeprefix(prefix): tensor.detach().contiguous()
        for name, tensor in state_dict.items()
    }


def copy_student_files(source: str | Path, destination: str | Path) -> list[str]:
    """Copy the files of :data:`STUDENT_REPO_FILES` from ``source`` (a checkpoint) into
    ``destination``; the names copied."""
    source, destination = Path(source), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    copied = []
    for pattern in STUDENT_REPO_FILES:
        for path in sorted(source.glob(pattern)):
            if path.is_file():
                shutil.copy2(path, destination / path.name)
                copied.append(path.name)
    return copied


def push_student_to_hub(
    output_dir: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload distilled student",
    revision: str | None = None,
    run_as_future: bool = False,
    api: HfApi | None = None,
) -> CommitInfo | Future[CommitInfo]:
    """Create ``repo_id`` if needed and upload the saved student folder as one commit.

    Uploads the files of :data:`STUDENT_REPO_FILES` that :func:`save_student`, the card
    writer and the training scripts put in ``output_dir`` (weights, config, image processor,
    ``README.md``, ``training_curves.png``, results) and nothing else. An hf-kd card is first
    re-rendered when its usage snippets name another repo than the one pushed to. Returns
    the commit (a ``str`` subclass: the commit URL), or a ``Future`` of it with
    ``run_as_future``. Background uploads of one ``api`` client run one at a time, in the
    order they were started (default: a new client made with ``token``).
    """
    output_dir = Path(output_dir)
    if not (output_dir / "config.json").is_file():
        raise ValueError(
            f"{output_dir} holds no config.json: save the student first (save_student)"
        )
    if not (output_dir / "README.md").is_file():
        logger.warning("%s has no README.md: the repo will have no model card", output_dir)
    api = api if api is not None else HfApi(token=token, library_name="hf-kd")
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    _point_card_at(output_dir, repo_url.repo_id)
    logger.info("pushing %s to %s", output_dir, repo_url.repo_id)
    return api.upload_folder(
        repo_id=repo_url.repo_id,
        folder_path=output_dir,
        commit_message=commit_message,
        revision=revision,
        allow_patterns=list(STUDENT_REPO_FILES),
        run_as_future=run_as_future,
    )


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
) -> CommitInfo:
    """Upload only ``filenames`` of ``output_dir`` to an existing repo; returns the commit.

    Used to add results (e.g. transfer evaluation) to a published student without
    re-uploading its weights.
    """
    missing = [name for name in filenames if not (Path(output_dir) / name).is_file()]
    if missing:
        raise ValueError(f"cannot push missing file(s) {missing} from {output_dir}")
    return HfApi(token=token, library_name="hf-kd").upload_folder(
        repo_id=repo_id,
        folder_path=output_dir,
        allow_patterns=filenames,
        commit_message=commit_message,
    )


def check_repo_name(organization: str, name: str) -> str:
    """``name`` when the Hub accepts ``<organization>/<name>`` as a repo id
    (``huggingface_hub``'s own rule); a ``ValueError`` naming the rule otherwise."""
    try:
        validate_repo_id(f"{organization}/{name}")
    except HFValidationError as error:
        raise ValueError(f"{name!r} is not a valid Hub repo name: {error}") from error
    return name


def push_students_to_hub(
    folders: list[str | Path],
    organization: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload distilled student",
    api: HfApi | None = None,
) -> dict[str, CommitInfo]:
    """Push each saved folder to ``<organization>/<folder name>``, one commit each
    (:func:`push_student_to_hub`); ``{repo_id: commit}`` in the order given.

    Every folder is checked (a saved model with a valid repo name, no two with one name)
    before anything is uploaded, so a bad set fails before it is half published.
    """
    paths = [Path(folder) for folder in folders]
    names = [check_repo_name(organization, path.name) for path in paths]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"two folders would be pushed to the same repo: {duplicates}")
    unsaved = [str(path) for path in paths if not (path / "config.json").is_file()]
    if unsaved:
        raise ValueError(f"no saved model (config.json) in {unsaved}: save them first")
    api = api if api is not None else HfApi(token=token, library_name="hf-kd")
    return {
        f"{organization}/{name}": push_student_to_hub(
            path,
            f"{organization}/{name}",
            private=private,
            commit_message=commit_message,
            api=api,
        )
        for path, name in zip(paths, names, strict=True)
    }
