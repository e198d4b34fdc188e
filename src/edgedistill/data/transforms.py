"""Image transforms: fixed views (teacher, student eval) and replayable augmented crops.

An augmented crop is described by ``AugParams`` in coordinates *relative* to the source
image, so the same crop can be rendered at the student's resolution and at the teacher's
(e.g. 96 px and 224 px) and both networks see exactly the same content. Crops of cached
view ``v`` of image ``(source, index)`` are a pure function of ``(seed, source, index, v)``
(``sample_aug_params``), which is what lets a student train on crops whose teacher outputs
were computed once and cached.

Every transform here is called as ``transform(pil_image, source_key, index)`` by
``DataSplits.dataset``; ``eval_transform`` also accepts a bare ``transform(pil_image)``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from edgedistill.errors import ConfigError

Triple = tuple[float, float, float]

# timm.data.IMAGENET_DEFAULT_{MEAN,STD}, written out so importing the data layer stays light.
NORMALIZE_IMAGENET: tuple[Triple, Triple] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
NORMALIZE_CIFAR: tuple[Triple, Triple] = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
NORMALIZE_SIMPLE: tuple[Triple, Triple] = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # the reference tutorial's
NORMALIZATIONS = {"imagenet": NORMALIZE_IMAGENET, "cifar": NORMALIZE_CIFAR, "simple": NORMALIZE_SIMPLE}

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class ViewSpec:
    """How a network wants its input: square size, normalisation and resampling.

    Attributes:
        image_size: Output side in pixels.
        mean: Per-channel mean subtracted after scaling to [0, 1].
        std: Per-channel std divided by.
        interpolation: ``nearest``, ``bilinear``, ``bicubic`` or ``lanczos``.
        crop_pct: 1.0: resize the whole image to ``image_size`` squared. Below 1: resize the
            short side to ``image_size / crop_pct`` and center-crop ``image_size`` (timm/CLIP style).
    """

    image_size: int
    mean: Triple
    std: Triple
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ConfigError(f"image_size={self.image_size} must be >= 1")
        if self.interpolation not in _RESAMPLE:
            raise ConfigError(f"Unknown interpolation {self.interpolation!r}. Valid: {', '.join(_RESAMPLE)}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct={self.crop_pct} must be in (0, 1]")
        # Tuples, not lists, so the spec stays hashable and its dict stable whatever the caller passed.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for fingerprints and manifests."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def student_view(image_size: int, norm: str = "imagenet", interpolation: str = "bicubic") -> ViewSpec:
    """A student's ViewSpec with a named normalisation (``imagenet``, ``cifar`` or ``simple``)."""
    if norm not in NORMALIZATIONS:
        raise ConfigError(f"Unknown normalisation {norm!r}. Valid: {', '.join(NORMALIZATIONS)}")
    mean, std = NORMALIZATIONS[norm]
    return ViewSpec(image_size, mean, std, interpolation)


def _to_normalized_tensor(img: Image.Image, view: ViewSpec) -> torch.Tensor:
    return TF.normalize(TF.to_tensor(img), view.mean, view.std)  # [3, S, S] float32


class _EvalTransform:
    """Resize (and optionally center-crop), to tensor, normalise. Picklable for DataLoader workers."""

    def __init__(self, view: ViewSpec) -> None:
        self.view = view

    def __call__(self, img: Image.Image, source: str | None = None, index: int | None = None) -> torch.Tensor:
        v = self.view
        if img.mode != "RGB":
            img = img.convert("RGB")
        if v.crop_pct >= 1.0:
            img = img.resize((v.image_size, v.image_size), _RESAMPLE[v.interpolation])
        else:
            mode = TF.InterpolationMode(v.interpolation)
            img = TF.resize(img, math.floor(v.image_size / v.crop_pct), interpolation=mode)
            img = TF.center_crop(img, [v.image_size, v.image_size])
        return _to_normalized_tensor(img, v)

    def __repr__(self) -> str:
        return f"eval_transform({self.view})"


def eval_transform(view: ViewSpec) -> _EvalTransform:
    """Deterministic transform: ``f(pil) -> Tensor [3, S, S]`` (also callable as ``f(pil, source, index)``)."""
    return _EvalTransform(view)


@dataclass(frozen=True)
class AugParams:
    """One augmented crop, in coordinates relative to the source image (all in [0, 1]).

    Attributes:
        top: Top edge as a fraction of the image height.
        left: Left edge as a fraction of the image width.
        height: Crop height as a fraction of the image height.
        width: Crop width as a fraction of the image width.
        flip: Mirror horizontally after cropping.
    """

    top: float
    left: float
    height: float
    width: float
    flip: bool


CACHED_CROP_SCALE: tuple[float, float] = (0.35, 1.0)
"""Crop-area range of the cached augmented views (``edgedistill cache --views K``) and the default of training crops."""


def _aug_generator(seed: int, source: str, index: int, view: int) -> torch.Generator:
    # A hash, not seed + index arithmetic, so neighbouring images/views get unrelated streams.
    digest = hashlib.sha256(f"{seed}/{source}/{index}/{view}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _sample_crop(gen: torch.Generator | None, scale: tuple[float, float], ratio: tuple[float, float]) -> AugParams:
    """RandomResizedCrop's sampling (torchvision), in relative units.

    The aspect ratio is relative to the image's own (exact for square images such as STL10 or
    CIFAR), which keeps the parameters independent of the image size.
    """
    u = torch.rand(14, generator=gen, dtype=torch.float64).tolist()  # fixed draw count: replay-stable
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(4):
        area = scale[0] + (scale[1] - scale[0]) * u[3 * k]
        r = math.exp(log_lo + (log_hi - log_lo) * u[3 * k + 1])
        w, h = math.sqrt(area * r), math.sqrt(area / r)
        if w <= 1.0 and h <= 1.0:
            break
    else:  # every try fell outside the image: take the largest crop of the clamped ratio, centred
        r = min(max(1.0, ratio[0]), ratio[1])
        w, h = (1.0, 1.0 / r) if r >= 1.0 else (r, 1.0)
        u[12] = u[13] = 0.5
    return AugParams(top=(1.0 - h) * u[12], left=(1.0 - w) * u[13], height=h, width=w, flip=u[3 * k + 2] < 0.5)


def sample_aug_params(
    seed: int,
    source: str,
    index: int,
    view: int,
    scale: tuple[float, float] = CACHED_CROP_SCALE,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> AugParams:
    """The crop of cached view ``view`` of image ``(source, index)``: the same arguments give the same crop.

    Args:
        seed: Augmentation seed (recorded in the cache manifest).
        source: Source key, e.g. ``"stl10/unlabeled"``.
        index: Index of the image within its source.
        view: View number in ``[0, K)``.
        scale: Range of the crop's area as a fraction of the image's.
        ratio: Range of the crop's aspect ratio (relative to the image's).
    """
    return _sample_crop(_aug_generator(seed, source, index, view), scale, ratio)


def apply_aug(img: Image.Image, p: AugParams, view: ViewSpec) -> torch.Tensor:
    """Render crop ``p`` of ``img`` at ``view``: crop, flip, resize, normalise.

    PIL's ``resize(box=...)`` takes a float box, so the crop is the same sub-pixel region at
    any input or output resolution.

    Returns:
        Tensor ``[3, view.image_size, view.image_size]``.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    W, H = img.size
    box = (p.left * W, p.top * H, (p.left + p.width) * W, (p.top + p.height) * H)
    out = img.resize((view.image_size, view.image_size), _RESAMPLE[view.interpolation], box=box)
    if p.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _to_normalized_tensor(out, view)


class TrainTransform:
    """The student's training transform, optionally with the teacher's view of the same crop.

    Three modes:
      * ``num_views=K``: pick a view ``v`` uniformly at random in ``[0, K)`` (fresh each call,
        from torch's RNG, which DataLoader seeds per worker) and render
        ``sample_aug_params(seed, source, index, v)``: exactly a crop whose teacher outputs
        are in the K-view cache. Returns ``view=v`` so the caller can look those outputs up.
      * ``aug=True, num_views=None``: a fresh random crop each call (online teacher); ``view=-1``.
      * ``aug=False``: the plain eval transform; ``view=-1``.
    With ``teacher_view`` set, the output also holds ``teacher_image``: the same crop (or the
    same plain resize) rendered at the teacher's view.

    Returns (from ``__call__``):
        ``{"image": [3, S, S], "view": int}`` plus ``"teacher_image": [3, T, T]`` when a teacher view is set.
    """

    def __init__(
        self,
        student_view: ViewSpec,
        aug: bool = True,
        seed: int = 0,
        teacher_view: ViewSpec | None = None,
        num_views: int | None = None,
        scale: tuple[float, float] = CACHED_CROP_SCALE,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        if num_views is not None and num_views < 1:
            raise ConfigError(f"num_views={num_views} must be >= 1 or null")
        self.student_view, self.teacher_view = student_view, teacher_view
        self.aug, self.seed, self.num_views = aug, seed, num_views
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def __call__(self, img: Image.Image, source: str, index: int) -> dict[str, Any]:
        if not self.aug and self.num_views is None:
            out = {"image": eval_transform(self.student_view)(img), "view": -1}
            if self.teacher_view is not None:
                out["teacher_image"] = eval_transform(self.teacher_view)(img)
            return out
        if self.num_views is not None:
            v = int(torch.randint(self.num_views, ()).item())
            p = sample_aug_params(self.seed, source, index, v, self.scale, self.ratio)
        else:
            v, p = -1, _sample_crop(None, self.scale, self.ratio)
        out = {"image": apply_aug(img, p, self.student_view), "view": v}
        if self.teacher_view is not None:
            out["teacher_image"] = apply_aug(img, p, self.teacher_view)
        return out
