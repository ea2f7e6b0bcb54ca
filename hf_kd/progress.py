"""Progress bars for hf-kd's loops over datasets (feature extraction, logit caching, probe
training), shown on stderr as the Trainer shows its own.

Off with the loop's ``disable_tqdm=True`` (the Trainer's flag name), or for every library at
once through transformers' switch (``transformers.utils.logging.disable_progress_bar()``, or
the environment variable ``HF_HUB_DISABLE_PROGRESS_BARS=1``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from transformers.utils import logging as transformers_logging


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    disable: bool = False,
) -> Any:
    """A ``tqdm`` bar over ``iterable`` (or updated by hand up to ``total``); an inert one
    when ``disable`` or when transformers' progress bars are off."""
    return transformers_logging.tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable)
