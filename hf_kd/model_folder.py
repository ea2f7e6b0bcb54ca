"""The saving contract of hf-kd's trainers: ``save_model`` leaves a Hub-ready model folder.

:class:`ModelFolderMixin` goes before ``Trainer`` in a trainer's bases
(:class:`hf_kd.trainer.DistillationTrainer`, :class:`hf_kd.classifier_trainer.ClassifierTrainer`).
``_save`` writes the model with :func:`hf_kd.hub.save_student` (safetensors only, a timm model
in the layout timm and transformers both load, with its preprocessing); ``save_model`` called
by the user (not the Trainer's checkpoint saves) also writes the model card with
:meth:`ModelFolderMixin.create_model_card`, the Trainer's signature. The card holds what
:meth:`ModelFolderMixin.student_card` reads off the run (model, training setup, the latest
evaluation's accuracy, licence, Hub metadata, framework versions) plus what the trainer's
``card_objective_fields`` adds (the teacher and the distillation objective, if any).

An optimizer given to the Trainer (``optimizers=``) is described from the optimizer itself
(:func:`hf_kd.model_card.describe_optimizer`), not from the arguments it replaces.

The card is built from ``state`` and ``args`` (and that optimizer) only, so a trainer whose
``state`` was loaded from a finished run's ``trainer_state.json``
(``TrainerState.load_from_json``) writes the run's card without training in this process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

from transformers import BaseImageProcessor, PreTrainedModel

from hf_kd.hub import save_student
from hf_kd.model_card import (
    HubMetadata,
    ModelSummary,
    StudentCard,
    TrainingSetup,
    describe_optimizer,
    framework_versions,
    latest_eval_accuracies,
    write_model_card,
)
from hf_kd.preprocessing import ImagePreprocessing

logger = logging.getLogger(__name__)

DEFAULT_LICENSE = "apache-2.0"


class ModelFolderMixin:
    """``save_model``, ``_save`` and ``create_model_card`` for a ``Trainer`` subclass.

    The trainer sets ``student_summary`` (:class:`hf_kd.model_card.ModelSummary` of its model,
    taken before Accelerate wraps it), ``student_preprocessing`` (the model's input, saved with
    it unless ``processing_class`` is an image processor), ``dataset_name``,
    ``eval_split_name``, ``training_eval_split_name`` and ``split_sizes``, and implements
    ``card_objective_fields()``: the
    :class:`hf_kd.model_card.StudentCard` fields of its training objective (``teacher``,
    ``method``, ``kd_weight``, ...).
    """

    student_summary: ModelSummary
    student_preprocessing: ImagePreprocessing | None
    dataset_name: str | None
    eval_split_name: str
    training_eval_split_name: str
    split_sizes: dict[str, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        optimizers = kwargs.get("optimizers") or (None, None)
        super().__init__(*args, **kwargs)
        # an optimizer given to the Trainer replaces the one its arguments configure: the card
        # then describes the one given
        self.optimizer_given = optimizers[0] is not None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model and, unless the Trainer saves a checkpoint, its model card.

        The model is written by :meth:`_save`; the card (``README.md``, ``student_card.json``,
        ``training_curves.png``) by :meth:`create_model_card`, on the main process, after the
        weights. With ``args.push_to_hub`` a user's ``save_model`` also pushes, as the
        Trainer's does.
        """
        super().save_model(output_dir, _internal_call=True)
        if _internal_call:
            return
        self.create_model_card(output_dir=output_dir)
        if self.args.push_to_hub:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the model with :func:`hf_kd.hub.save_student` (main process only).

        Safetensors only, no pickled ``training_args.bin``; a timm model in the layout timm
        and transformers both load; the model's preprocessing: ``processing_class`` when it
        is an image processor, else ``student_preprocessing``. ``state_dict`` is the one the
        Trainer gathered under FSDP or DeepSpeed. PEFT models and tensor-parallel loading
        keep the Trainer's own saving.
        """
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if (
            not isinstance(model, PreTrainedModel)
            or getattr(model, "_hf_peft_config_loaded", False)
            or self.is_distributed_loading_by_transformers
        ):
            super()._save(output_dir, state_dict)
            return
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        logger.info("saving the model to %s", output_dir)
        image_processor = (
            self.processing_class
            if isinstance(self.processing_class, BaseImageProcessor)
            else self.student_preprocessing
        )
        save_student(model, output_dir, image_processor=image_processor, state_dict=state_dict)

    def student_card(
        self,
        *,
        model_name: str | None = None,
        dataset: str | None = None,
        license: str | None = None,
        finetuned_from: str | None = None,
        hub_metadata: HubMetadata | None = None,
    ) -> StudentCard:
        """The model card's content for the model as it is now.

        The model (``finetuned_from`` names its initialisation, the card's ``base_model``),
        the training setup read from ``args`` and ``state`` (epochs and optimizer steps
        trained), the latest evaluation's accuracy in ``state.log_history`` (on
        ``eval_split_name``), ``args.hub_model_id`` as the repo the usage snippets load, the
        licence (default ``apache-2.0``), ``hub_metadata``, the framework versions, and the
        trainer's objective (``card_objective_fields``: the teacher, method and weights).
        ``model_name`` defaults to the Hub repo's name, else the output folder's.
        """
        accuracy, top5_accuracy = latest_eval_accuracies(self.state.log_history)
        repo_id = self.hub_model_id or self.args.hub_model_id
        model = self.student_summary
        if finetuned_from is not None:
            model = dataclasses.replace(model, initialisation=finetuned_from)
        return StudentCard(
            model_name=model_name or card_model_name(repo_id, self.args.output_dir),
            student=model,
            training=TrainingSetup.from_training_args(
                self.args,
                dataset or self.dataset_name or "an unnamed dataset",
                epochs=self.state.epoch or 0.0,
                steps=self.state.global_step,
                split_sizes=self.split_sizes,
                optimizer_hyperparameters=(
                    describe_optimizer(self.optimizer, self.lr_scheduler)
                    if self.optimizer_given
                    else None
                ),
            ),
            eval_accuracy=accuracy,
            eval_top5_accuracy=top5_accuracy,
            eval_split=self.eval_split_name,
            training_eval_split=self.training_eval_split_name,
            license=license or DEFAULT_LICENSE,
            repo_id=repo_id,
            hub_metadata=hub_metadata or HubMetadata(),
            framework_versions=framework_versions(),
            **self.card_objective_fields(),
        )

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
        *,
        output_dir: str | None = None,
    ) -> StudentCard | None:
        """Write the model card to ``output_dir`` (default ``args.output_dir``).

        The Trainer's signature, in its order; replaces the Trainer's draft card, which lists
        no results: see :meth:`student_card` and
        :func:`hf_kd.model_card.write_model_card`. ``license`` (default ``apache-2.0``),
        ``model_name`` (default: the Hub repo's name, else the output folder's), ``dataset``
        (the dataset's display name, default ``dataset_name``; a list is joined) and
        ``finetuned_from`` (the model's initialisation, the card's ``base_model``) override
        the card's; ``language``, ``tags`` (with the model's ``model_tags``), ``tasks``,
        ``dataset_tags`` and ``dataset_args`` join its metadata
        (:class:`hf_kd.model_card.HubMetadata`). Runs on the processes that save
        (``args.should_save``); returns the card written, ``None`` elsewhere.
        """
        if not self.args.should_save:
            return None
        hub_metadata = HubMetadata.of(language, tags, tasks, dataset_tags, dataset_args)
        model_tags = getattr(self.accelerator.unwrap_model(self.model), "model_tags", None) or []
        hub_metadata.tags += [tag for tag in model_tags if tag not in hub_metadata.tags]
        card = self.student_card(
            model_name=model_name,
            dataset=", ".join(dataset) if isinstance(dataset, list) else dataset,
            license=license,
            finetuned_from=finetuned_from,
            hub_metadata=hub_metadata,
        )
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        return write_model_card(card, output_dir, log_history=self.state.log_history)


def dataset_sizes(**datasets: Any) -> dict[str, int]:
    """The length of each dataset that has one (not streams, not several named ones)."""
    return {
        split: len(dataset)
        for split, dataset in datasets.items()
        if hasattr(dataset, "__len__") and not isinstance(dataset, Mapping)
    }


def card_model_name(repo_id: str | None, output_dir: str) -> str:
    """The Trainer's default model name: the Hub repo's name, else the output folder's."""
    if repo_id:
        return repo_id.split("/")[-1]
    return os.path.basename(os.path.abspath(output_dir))
