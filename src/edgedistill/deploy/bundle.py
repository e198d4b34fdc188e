"""Load an exported bundle inside an app and classify images: torch-free (ONNX Runtime, numpy, Pillow).

An export directory is the bundle: ``model.onnx`` (FP32; its :class:`~edgedistill.deploy.runtime.DeployMeta`
in the file's metadata: labels, preprocessing), ``model.int8.onnx``, ``model.text_embeddings.npy`` (prompts'
text embeddings), ``export.json`` (what was exported and checked) and ``README.md`` (the model card)::

    from edgedistill.deploy import load_bundle

    model = load_bundle("runs/demo/exports/student")              # precision="int8" for the INT8 file
    model.classify(["cat.jpg", pil_image, uint8_hwc_array], top_k=3)
    # [[("cat", 0.91), ("dog", 0.05), ("deer", 0.01)], ...]
    probs = model.predict_proba(images, batch_size=32)           # [N, C] float32, columns = model.labels

Images may be file paths, PIL images (any mode: EXIF orientation is applied and 16-bit / float
images are scaled, as in training) or numpy arrays (``H x W`` grayscale or ``H x W x 3`` RGB; uint8,
uint16 or float in 0..1). They are preprocessed exactly as in training (``data.views.preprocess``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image

from edgedistill.data.images import decode_image, to_rgb
from edgedistill.data.views import preprocess
from edgedistill.deploy.runtime import Classifier, DeployMeta, OnnxModel
from edgedistill.errors import ConfigError, EdgeDistillError

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]

__all__ = ["Bundle", "ImageLike", "load_bundle", "as_image"]

# Files of a bundle by precision (export.json's ``files``).
_PRECISION_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


def as_image(item: ImageLike) -> Image.Image:
    """An 8-bit RGB PIL image from a path, a PIL image or an ``H x W`` / ``H x W x 3`` array.

    Raises:
        EdgeDistillError: an array of another shape or dtype (message names it).
        BadImageError: a path that cannot be decoded.
    """
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, np.ndarray):
        arr = item
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
            raise EdgeDistillError(f"an image array must be H x W or H x W x 3; got shape {tuple(item.shape)}")
        if arr.dtype == np.uint8:
            return Image.fromarray(arr).convert("RGB")
        if arr.dtype == np.uint16:  # 16-bit: scaled by its depth, as a 16-bit file would be
            arr = (arr.astype(np.float64) / 257.0)
        elif np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64) * 255.0
        else:
            raise EdgeDistillError(f"an image array must be uint8, uint16 or float (0..1); got {arr.dtype}")
        return Image.fromarray(np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)).convert("RGB")
    if isinstance(item, (str, os.PathLike)):
        return decode_image(item)
    raise EdgeDistillError(f"cannot classify a {type(item).__name__}: give a path, a PIL image or a numpy array")


class Bundle:
    """An exported model loaded for an app: labels, preprocessing, batched classification.

    Args:
        path: the export directory (or one of its ``.onnx`` files).
        precision: ``fp32`` or ``int8`` (the file of that precision in the bundle).
        prompts: classify by cosine against these prompts' stored text embeddings (embedding models).
        providers: ONNX Runtime execution providers (default CPU; e.g. ``["CUDAExecutionProvider", ...]`` on a Jetson).
    """

    def __init__(self, path: str | os.PathLike, *, precision: str = "fp32", prompts: Sequence[str] | None = None,
                 providers: Sequence | None = None) -> None:
        path = Path(path)
        if precision not in _PRECISION_FILES:
            raise ConfigError(f"precision={precision!r} is invalid; valid: {', '.join(_PRECISION_FILES)}")
        if path.is_dir():
            self.dir = path
            path = path / _PRECISION_FILES[precision]
            if not path.is_file():
                have = [p for p, f in _PRECISION_FILES.items() if (self.dir / f).is_file()]
                raise EdgeDistillError(f"bundle {str(self.dir)!r} has no {precision} model ({path.name}); "
                                       f"it has: {', '.join(have) or 'none'}")
        elif not path.is_file():
            raise EdgeDistillError(f"bundle {str(path)!r} does not exist")
        else:
            self.dir = path.parent
        self.model = OnnxModel(path, providers)
        self.classifier: Classifier = self.model.classifier(list(prompts) if prompts else None)

    @property
    def meta(self) -> DeployMeta:
        """What the model is: architecture, outputs, preprocessing view, precision, source."""
        return self.model.meta

    @property
    def labels(self) -> list[str]:
        """Names of the probability columns."""
        return list(self.classifier.labels)

    def preprocess(self, images: Iterable[ImageLike]) -> np.ndarray:
        """Images as the model's input batch ``[N, 3, S, S]`` float32 (the training preprocessing)."""
        arrays = [preprocess(as_image(x), self.classifier.view) for x in images]
        if not arrays:
            raise EdgeDistillError("no images given")
        return np.stack(arrays)

    def predict_proba(self, images: ImageLike | Iterable[ImageLike], batch_size: int = 32) -> np.ndarray:
        """Probabilities ``[N, C]`` (float32, columns in :attr:`labels` order), run ``batch_size`` images at a time."""
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        items = [images] if isinstance(images, (str, os.PathLike, Image.Image)) or (
            isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object) else list(images)
        out = [self.classifier.score(self.preprocess(items[i:i + batch_size]))
               for i in range(0, len(items), batch_size)]
        if not out:
            raise EdgeDistillError("no images given")
        return np.concatenate(out).astype(np.float32)

    def classify(self, images: ImageLike | Iterable[ImageLike], top_k: int = 1,
                 batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """The ``top_k`` (label, probability) pairs of each image, best first."""
        if top_k < 1:
            raise ConfigError(f"top_k={top_k} must be >= 1")
        probs = self.predict_proba(images, batch_size)
        top = np.argsort(-probs, axis=1)[:, :top_k]
        return [[(self.labels[j], float(p[j])) for j in row] for p, row in zip(probs, top)]

    @property
    def card(self) -> str | None:
        """The bundle's model card (``README.md``), or None for a bundle exported before cards existed."""
        card = self.dir / "README.md"
        return card.read_text() if card.is_file() else None


def load_bundle(path: str | os.PathLike, *, precision: str = "fp32", prompts: Sequence[str] | None = None,
                providers: Sequence | None = None) -> Bundle:
    """Load an exported bundle (see :class:`Bundle`)."""
    return Bundle(path, precision=precision, prompts=prompts, providers=providers)
