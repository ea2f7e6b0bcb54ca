"""The registry, hyperparameter validation and the presets (spec sections A and 7)."""

from __future__ import annotations

import pytest

from hf_kd.losses import Preset, available_losses, build_loss, preset

CONTRACT = {
    "kd": ({"temperature": 4.0}, ("kd",)),
    "dkd": ({"temperature": 4.0, "alpha": 1.0, "beta": 8.0}, ("tckd", "nckd")),
    "normkd": ({"t_norm": 2.0}, ("normkd",)),
    "normkd_dkd": ({"t_norm": 2.0, "alpha": 1.0, "beta": 8.0}, ("tckd", "nckd")),
    "rld": (
        {"temperature": 4.0, "alpha_temperature": 4.0, "alpha": 1.0, "beta": 8.0},
        ("scd", "mcd"),
    ),
    "mcld": (
        {
            "tau": 0.1,
            "instance_weight": 1.0,
            "sample_weight": 1.0,
            "category_weight": 1.0,
            "category_warmup_epochs": 20,
            "target_mask": True,
            "similarity": "pearson",
        },
        ("instance", "sample", "category"),
    ),
}


def test_available_losses() -> None:
    assert available_losses() == ["dkd", "hard", "kd", "mcld", "normkd", "normkd_dkd", "rld"]


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_defaults_and_terms_follow_the_contract(name: str) -> None:
    defaults, terms = CONTRACT[name]
    loss_fn = build_loss(name)
    hyperparameters = loss_fn.hyperparameters()
    for key, value in defaults.items():
        assert hyperparameters[key] == value, key
    assert hyperparameters["logit_standardization"] is False
    assert loss_fn.term_names == terms


def test_unknown_loss_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown distillation loss 'ctkd'.*dkd, hard, kd, mcld"):
        build_loss("ctkd")


def test_unknown_hyperparameter_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['gamma'\].*'alpha'"):
        build_loss("dkd", gamma=1.0)


@pytest.mark.parametrize(
    ("name", "hyperparameters", "message"),
    [
        ("kd", {"temperature": 0.0}, "temperature must be a finite number > 0"),
        ("kd", {"temperature": float("nan")}, "temperature must be a finite number > 0"),
        ("kd", {"temperature": "4"}, "temperature must be a number"),
        ("dkd", {"beta": -1.0}, "beta must be a finite number >= 0"),
        ("dkd", {"alpha": True}, "alpha must be a number"),
        ("normkd", {"t_norm": -2.0}, "t_norm must be a finite number > 0"),
        ("rld", {"alpha_temperature": 0}, "alpha_temperature must be a finite number > 0"),
        ("kd", {"logit_standardization": "yes"}, "logit_standardization must be True or False"),
        ("mcld", {"tau": 0.0}, "tau must be a finite number > 0"),
        ("mcld", {"category_weight": -0.5}, "category_weight must be a finite number >= 0"),
        ("mcld", {"category_warmup_epochs": -1}, "category_warmup_epochs must be"),
        ("mcld", {"similarity": "euclidean"}, "similarity must be one of"),
        ("mcld", {"target_mask": 1}, "target_mask must be True or False"),
        ("mcld", {"target_mask_variant": "both"}, "target_mask_variant must be one of"),
        ("mcld", {"sample_positives": "all"}, "sample_positives must be one of"),
        ("mcld", {"category_classes": "seen"}, "category_classes must be one of"),
        ("mcld", {"category_block_size": 0}, "category_block_size must be a positive int"),
        ("mcld", {"category_block_size": 2.5}, "category_block_size must be a positive int"),
        ("mcld", {"gather_across_ranks": "no"}, "gather_across_ranks must be True or False"),
        ("mcld", {"symmetric_instance": None}, "symmetric_instance must be True or False"),
    ],
)
def test_invalid_hyperparameter_values(name: str, hyperparameters: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_loss(name, **hyperparameters)


SPEC_PRESETS = {
    ("kd", "cifar100", False): Preset(0.1, 0.9, 0, {"temperature": 4.0}),
    ("kd", "imagenet", False): Preset(0.5, 0.5, 0, {"temperature": 1.0}),
    ("dkd", "cifar100", False): Preset(
        1.0, 1.0, 20, {"temperature": 4.0, "alpha": 1.0, "beta": 8.0}
    ),
    ("dkd", "imagenet", False): Preset(
        1.0, 1.0, 1, {"temperature": 1.0, "alpha": 1.0, "beta": 0.5}
    ),
    ("normkd", "cifar100", False): Preset(0.1, 0.9, 0, {"t_norm": 2.0}),
    ("normkd", "imagenet", False): Preset(0.5, 0.5, 0, {"t_norm": 1.0}),
    ("normkd_dkd", "imagenet", False): Preset(
        1.0, 1.0, 1, {"t_norm": 0.5, "alpha": 1.0, "beta": 1.0}
    ),
    ("rld", "cifar100", False): Preset(
        1.0, 1.0, 20, {"temperature": 4.0, "alpha_temperature": 4.0, "alpha": 1.0, "beta": 8.0}
    ),
    ("rld", "imagenet", False): Preset(
        1.0, 1.0, 1, {"temperature": 1.0, "alpha_temperature": 1.0, "alpha": 1.0, "beta": 0.5}
    ),
    ("mcld", "cifar100", False): Preset(1.0, 1.0, 0, {}),
    ("mcld", "imagenet", False): Preset(1.0, 1.0, 0, {}),
    # Logit standardisation: base temperature 2 and weights multiplied by kd_weight 9 (LSR).
    ("kd", "cifar100", True): Preset(
        0.1, 9.0, 0, {"temperature": 2.0, "logit_standardization": True}
    ),
    ("kd", "imagenet", True): Preset(
        1.0, 9.0, 0, {"temperature": 2.0, "logit_standardization": True}
    ),
    ("dkd", "cifar100", True): Preset(
        1.0,
        1.0,
        20,
        {"temperature": 2.0, "alpha": 9.0, "beta": 72.0, "logit_standardization": True},
    ),
}


@pytest.mark.parametrize(("key", "expected"), SPEC_PRESETS.items(), ids=str)
def test_presets_carry_the_official_values(key: tuple, expected: Preset) -> None:
    method, dataset, logit_standardization = key
    assert preset(method, dataset, logit_standardization=logit_standardization) == expected


def test_dkd_cifar100_preset() -> None:
    chosen = preset("dkd", "cifar100")
    assert (chosen.ce_weight, chosen.kd_weight, chosen.warmup_epochs) == (1.0, 1.0, 20)
    assert chosen.loss_kwargs == {"temperature": 4.0, "alpha": 1.0, "beta": 8.0}


@pytest.mark.parametrize("dataset", ["cifar100", "imagenet"])
@pytest.mark.parametrize("logit_standardization", [False, True])
def test_every_preset_builds_its_loss(dataset: str, logit_standardization: bool) -> None:
    for name in available_losses():
        chosen = preset(name, dataset, logit_standardization=logit_standardization)
        loss_fn = build_loss(name, **chosen.loss_kwargs)
        assert loss_fn.logit_standardization is logit_standardization


def test_unknown_preset_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown preset dataset 'svhn'"):
        preset("kd", "svhn")
    with pytest.raises(ValueError, match="no preset for loss 'ctkd'"):
        preset("ctkd", "cifar100")
