"""Shared fixtures: small image folders written as real PNG files."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.utils import logging as transformers_logging

# Every image of a class has the same RGB colour once converted (transparency on white),
# whatever its stored mode, so a test can predict each normalised pixel exactly.
CLASS_COLOURS = {"gray": (100, 100, 100), "red": (200, 30, 30), "white": (255, 255, 255)}
IMAGES_PER_CLASS = 4
CORRUPT_FILE_NAME = "broken.png"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """The test machine's cores are shared: one intra-op thread per test process."""
    torch.set_num_threads(1)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection (the Hub) fails the test."""

    def refuse(sock: socket.socket, address: object) -> None:
        raise AssertionError(f"network access to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def progress_bars_on():
    """transformers' global progress-bar switch on for the test, restored after."""
    was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.enable_progress_bar()
    yield
    if not was_on:
        transformers_logging.disable_progress_bar()


def _class_images(class_name: str) -> list[Image.Image]:
    """Four images of one class in different modes and shapes (width x height)."""
    colour = CLASS_COLOURS[class_name]
    if class_name == "gray":
        sixteen_bit = np.full((14, 11), colour[0] * 257, dtype=np.uint16)
        return [
            Image.new("L", (20, 12), colour[0]),
            Image.new("L", (12, 20), colour[0]),
            Image.new("L", (16, 16), colour[0]),
            Image.fromarray(sixteen_bit),  # 16-bit grayscale, mode "I;16"
        ]
    if class_name == "red":
        palette = Image.new("RGB", (18, 10), colour).convert("P", palette=Image.Palette.ADAPTIVE)
        return [
            Image.new("RGB", (20, 12), colour),
            Image.new("RGB", (12, 20), colour),
            Image.new("RGBA", (16, 16), (*colour, 255)),  # opaque RGBA
            palette,
        ]
    # fully transparent black: naive convert("RGB") would give black, compositing gives white
    return [
        Image.new("RGBA", (20, 12), (0, 0, 0, 0)),
        Image.new("RGBA", (12, 20), (0, 0, 0, 0)),
        Image.new("LA", (16, 16), (0, 0)),
        Image.new("RGBA", (9, 9), (0, 0, 0, 0)),
    ]


def write_class_folders(root: Path) -> Path:
    """Write ``root/<class>/<i>.png`` for every class of ``CLASS_COLOURS``; return ``root``."""
    for class_name in CLASS_COLOURS:
        (root / class_name).mkdir(parents=True)
        for index, image in enumerate(_class_images(class_name)):
            image.save(root / class_name / f"{index}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """An ``imagefolder``: class subfolders of PNGs (RGB, grayscale, 16-bit, RGBA, LA, P)."""
    return write_class_folders(tmp_path / "images")


@pytest.fixture
def split_image_folder(tmp_path: Path) -> Path:
    """An ``imagefolder`` with split folders ``train/``, ``validation/`` and ``test/``."""
    root = tmp_path / "split_images"
    for split in ("train", "validation", "test"):
        write_class_folders(root / split)
    return root


@pytest.fixture
def corrupt_image_folder(tmp_path: Path) -> Path:
    """An ``imagefolder`` whose ``red`` class holds one PNG cut off after its header."""
    root = write_class_folders(tmp_path / "corrupt_images")
    valid_png = (root / "red" / "0.png").read_bytes()
    (root / "red" / CORRUPT_FILE_NAME).write_bytes(valid_png[:40])
    return root
