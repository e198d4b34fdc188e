"""Shared fixtures: tiny datasets written by the tests (offline, seconds).

- ``stl10_root``: STL10 in the official binary layout, with an orientation pattern.
- ``image_folder``: a small labeled ImageFolder of PNGs and JPEGs, class-coloured.
- ``demo_root``: the bundled CIFAR-10 demo archive, extracted once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("EDGEDISTILL_NO_PROGRESS", "1")

STL10_SIZES = {"train": 20, "test": 10, "unlabeled": 7}
STL10_TOP_ROWS = 8  # rows 0..7 red
STL10_LEFT_COLS = 8  # columns 0..7 (below the red rows) green
IMAGE_FOLDER_CLASSES = ("cat", "dog", "ship")
IMAGE_FOLDER_COLOURS = {"cat": (220, 40, 40), "dog": (40, 220, 40), "ship": (40, 40, 220)}


def stl10_pattern(i: int) -> np.ndarray:
    """Image ``i`` of the fake STL10 as ``[96, 96, 3]`` uint8, upright.

    Top rows red, left columns green, the rest blue with an index-dependent value, so a
    transposed (sideways) read puts red on the left and is caught.
    """
    img = np.zeros((96, 96, 3), dtype=np.uint8)
    img[:, :, 2] = 50 + i % 200
    img[:, :STL10_LEFT_COLS] = (0, 255, 0)
    img[:STL10_TOP_ROWS] = (255, 0, 0)
    return img


def write_stl10(root: Path, sizes: dict[str, int] = STL10_SIZES) -> Path:
    """Write ``root/stl10_binary/`` as the official files; labels of image i are ``i % 10 + 1``."""
    d = root / "stl10_binary"
    d.mkdir(parents=True, exist_ok=True)
    offset = 0
    for part, n in sizes.items():
        # Official layout: per image [3, 96, 96] with each channel column-major, i.e. [3, W, H].
        x = np.stack([stl10_pattern(offset + i).transpose(2, 1, 0) for i in range(n)])
        x.tofile(d / f"{part}_X.bin")
        if part != "unlabeled":
            (np.arange(n) % 10 + 1).astype(np.uint8).tofile(d / f"{part}_y.bin")
        offset += n
    (d / "class_names.txt").write_text("\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
    return root


@pytest.fixture(scope="session")
def stl10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``stl10_binary/`` (train 20, test 10, unlabeled 7 images; 96x96)."""
    return write_stl10(tmp_path_factory.mktemp("stl10"))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """``<root>/{cat,dog,ship}/NN.{png,jpg}``: 6 images per class, 32x32, coloured by class plus noise."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for c in IMAGE_FOLDER_CLASSES:
        (root / c).mkdir(parents=True)
        for k in range(6):
            arr = np.clip(np.array(IMAGE_FOLDER_COLOURS[c]) + rng.integers(-30, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / c / f"{k:02d}.{'png' if k % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled CIFAR-10 demo extracted once: ``labeled/`` (1000), ``eval/`` (1000), ``unlabeled/`` (8000)."""
    from edgedistill.data.sources import extract_demo

    return extract_demo(tmp_path_factory.mktemp("demo") / "cifar10-demo")
