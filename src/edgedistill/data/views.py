"""A network's input view (size, resize rule, normalisation) and the one function that applies it.

``preprocess(image, view)`` is the eval transform of the whole package: training
(``data.transforms.eval_transform`` wraps it in a tensor), export parity checks, and the
deploy runtime (``predict`` on an ONNX file) all call it, so a deployed model sees exactly
the pixels it was trained and validated on. It needs only PIL and numpy (no torch).

The three resize rules are those of open_clip's ``PreprocessCfg.resize_mode`` and timm's
eval transform:

* ``squash``: resize the whole image to S x S (aspect ratio not kept);
* ``shortest``: resize the short side to ``floor(S / crop_pct)`` and center-crop S x S
  (open_clip's default has ``crop_pct=1``; timm classifiers about 0.875);
* ``longest``: resize the long side to S (aspect kept) and pad the rest with ``fill``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from edgedistill.data.images import to_rgb
from edgedistill.errors import ConfigError

Triple = tuple[float, float, float]
ResizeMode = Literal["squash", "shortest", "longest"]

# timm.data.IMAGENET_DEFAULT_{MEAN,STD}, written out so the data layer does not import timm.
NORMALIZE_IMAGENET: tuple[Triple, Triple] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NORMALIZE_CIFAR: tuple[Triple, Triple] = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
NORMALIZE_SIMPLE: tuple[Triple, Triple] = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # the reference tutorial's
NORMALIZATIONS = {"imagenet": NORMALIZE_IMAGENET, "cifar": NORMALIZE_CIFAR, "simple": NORMALIZE_SIMPLE}

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
RESIZE_MODES = ("squash", "shortest", "longest")


@dataclass(frozen=True)
class ViewSpec:
    """How a network wants its input: square size, resize rule, normalisation and resampling.

    Attributes:
        image_size: Output side S in pixels.
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel std divided by.
        interpolation: ``nearest``, ``bilinear``, ``bicubic`` or ``lanczos``.
        resize_mode: ``squash``, ``shortest`` or ``longest`` (see the module docstring).
        crop_pct: ``shortest`` only: the center crop's share of the resized short side (0, 1].
        fill: ``longest`` only: the padding value (0-255, every channel).
    """

    image_size: int
    mean: Triple
    std: Triple
    interpolation: str = "bicubic"
    resize_mode: str = "squash"
    crop_pct: float = 1.0
    fill: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 1:
            raise ConfigError(f"image_size={self.image_size!r} must be an integer >= 1")
        if self.interpolation not in RESAMPLE:
            raise ConfigError(f"Unknown interpolation {self.interpolation!r}. Valid: {', '.join(RESAMPLE)}")
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"Unknown resize_mode {self.resize_mode!r}. Valid: {', '.join(RESIZE_MODES)}")
        if not 0.0 < self.crop_pct <= 1.0 or (self.crop_pct < 1.0 and self.resize_mode != "shortest"):
            raise ConfigError(f"crop_pct={self.crop_pct} must be in (0, 1], and below 1 only with resize_mode='shortest'")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean={self.mean} / std={self.std}: give 3 values each, std > 0")
        # Tuples, not lists, so the spec stays hashable and its dict stable whatever the caller passed.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for fingerprints and manifests (``ViewSpec(**d)`` rebuilds it)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def student_view(image_size: int, mean: Triple | None = None, std: Triple | None = None,
                 interpolation: str = "bicubic") -> ViewSpec:
    """A student's view: the whole image squashed to ``image_size``, ImageNet normalisation unless given."""
    return ViewSpec(image_size, mean or NORMALIZE_IMAGENET[0], std or NORMALIZE_IMAGENET[1], interpolation)


def resize(image: Image.Image, view: ViewSpec) -> Image.Image:
    """The view's geometry on a PIL image: RGB, S x S (no normalisation)."""
    img = to_rgb(image)
    S, resample = view.image_size, RESAMPLE[view.interpolation]
    w, h = img.size
    if view.resize_mode == "squash":
        return img.resize((S, S), resample)
    if view.resize_mode == "shortest":
        # torchvision Resize(int) + CenterCrop arithmetic (what open_clip and timm compose).
        short = math.floor(S / view.crop_pct)
        long = int(short * max(w, h) / min(w, h))
        img = img.resize((short, long) if w <= h else (long, short), resample)
        w, h = img.size
        top, left = int(round((h - S) / 2.0)), int(round((w - S) / 2.0))
        return img.crop((left, top, left + S, top + S))
    # longest: open_clip's ResizeKeepRatio(longest=1) then CenterCropOrPad(fill).
    ratio = max(h / S, w / S)
    img = img.resize((round(w / ratio), round(h / ratio)), resample)
    w, h = img.size
    if w == S and h == S:
        return img
    canvas = Image.new("RGB", (max(w, S), max(h, S)), (view.fill,) * 3)
    canvas.paste(img, ((S - w) // 2 if S > w else 0, (S - h) // 2 if S > h else 0))
    W, H = canvas.size
    top, left = int(round((H - S) / 2.0)), int(round((W - S) / 2.0))
    return canvas.crop((left, top, left + S, top + S))


def normalize(pixels: np.ndarray, view: ViewSpec) -> np.ndarray:
    """uint8 ``[H, W, 3]`` (or ``[..., H, W, 3]``) pixels -> float32 ``[3, H, W]`` (``[..., 3, H, W]``), normalised."""
    x = np.moveaxis(pixels.astype(np.float32) / np.float32(255.0), -1, -3)
    mean = np.asarray(view.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(view.std, dtype=np.float32)[:, None, None]
    return (x - mean) / std


def preprocess(image: Image.Image, view: ViewSpec) -> np.ndarray:
    """The eval transform: resize per ``view``, scale to [0, 1], normalise.

    Returns:
        float32 ``[3, S, S]``.
    """
    return normalize(np.asarray(resize(image, view)), view)
