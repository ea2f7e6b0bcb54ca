"""A string-keyed registry of distillation losses."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from hf_kd.losses.base import DistillationLoss

LossClass = TypeVar("LossClass", bound=type[DistillationLoss])

_REGISTRY: dict[str, type[DistillationLoss]] = {}


def register_loss(name: str) -> Callable[[LossClass], LossClass]:
    """Class decorator: make a loss buildable by ``build_loss(name, ...)``."""

    def decorator(cls: LossClass) -> LossClass:
        if name in _REGISTRY:
            raise ValueError(f"a loss named {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return decorator


def available_losses() -> list[str]:
    """The registered loss names, sorted."""
    return sorted(_REGISTRY)


def loss_class(name: str) -> type[DistillationLoss]:
    """The class registered under ``name``; ``ValueError`` listing the valid names if none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown distillation loss {name!r}; available: {', '.join(available_losses())}"
        ) from None


def constructor_parameters(cls: type[DistillationLoss]) -> dict[str, object]:
    """Keyword hyperparameters of a loss class (its whole MRO) with their defaults."""
    parameters: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, DistillationLoss)):
            continue
        for parameter in inspect.signature(klass.__init__).parameters.values():
            if parameter.name == "self" or parameter.kind in (
                inspect.Parameter.VAR_KEYWORD,
                inspect.Parameter.VAR_POSITIONAL,
            ):
                continue
            parameters[parameter.name] = parameter.default
    return parameters


def build_loss(name: str, **hyperparameters: object) -> DistillationLoss:
    """Build the loss registered under ``name`` with the given hyperparameters.

    Raises ``ValueError`` naming the valid losses or hyperparameters.
    """
    cls = loss_class(name)
    valid = constructor_parameters(cls)
    unknown = sorted(set(hyperparameters) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {unknown} for loss {name!r}; valid: {sorted(valid)}"
        )
    return cls(**hyperparameters)
