"""Defaults fit the device they run on: a default run on a CPU-only machine warns about
nothing that the user did not ask for."""

from __future__ import annotations

import warnings

import pytest
import torch
from distill_helpers import PatternDataset, make_args, tiny_vit

from hf_kd.arguments import DistillationArguments, accelerator_available
from hf_kd.trainer import DistillationTrainer


@pytest.mark.skipif(accelerator_available(), reason="checks the CPU-only default")
def test_a_default_cpu_run_pins_no_memory_and_warns_about_none(tmp_path):
    # use_cpu left at its default: the machine simply has no accelerator
    args = make_args(tmp_path, use_cpu=False, max_steps=2, eval_strategy="steps", eval_steps=2)
    assert args.dataloader_pin_memory is False
    trainer = DistillationTrainer(
        model=tiny_vit(seed=1),
        teacher_model=tiny_vit(seed=2),
        args=args,
        train_dataset=PatternDataset(16),
        eval_dataset=PatternDataset(8, seed=1),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
        trainer.evaluate()
    messages = [str(warning.message) for warning in caught]
    assert not [message for message in messages if "pin_memory" in message], messages


def test_pin_memory_follows_the_accelerator_and_stays_settable(tmp_path):
    default = DistillationArguments(output_dir=str(tmp_path), report_to=[])
    assert default.dataloader_pin_memory is accelerator_available()
    assert accelerator_available() is torch.accelerator.is_available()
    forced = DistillationArguments(
        output_dir=str(tmp_path), report_to=[], dataloader_pin_memory=True
    )
    assert forced.dataloader_pin_memory is True


@pytest.mark.parametrize(("flag", "expected"), [(None, False), (True, True)])
def test_ddp_searches_for_unused_parameters_only_when_asked(tmp_path, flag, expected):
    """The kwargs Accelerate gives DistributedDataParallel (tests/test_distributed.py checks
    the wrapped module of a real 2-process run)."""
    overrides = {} if flag is None else {"ddp_find_unused_parameters": flag}
    trainer = DistillationTrainer(
        model=tiny_vit(seed=1),
        teacher_model=tiny_vit(seed=2),
        args=make_args(tmp_path, **overrides),
        train_dataset=PatternDataset(8),
    )
    assert trainer.accelerator.ddp_handler.find_unused_parameters is expected
