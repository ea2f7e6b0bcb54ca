"""Fixtures for the loss tests."""

from __future__ import annotations

import pytest

from .inputs import LOSS_NAMES


@pytest.fixture(params=LOSS_NAMES)
def loss_name(request: pytest.FixtureRequest) -> str:
    return request.param
