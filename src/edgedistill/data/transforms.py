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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from edgedistill.config import CACHED_CROP_SCALE
from edgedistill.data.views import RESAMPLE, ViewSpec, normalize, preprocess
from edgedistill.errors import ConfigError


class _EvalTransform:
    """``data.views.preprocess`` as a tensor. Picklable for DataLoader workers."""

    def __init__(self, view: ViewSpec) -> None:
        self.view = view

    def __call__(self, img: Image.Image, source: str | None = None, index: int | None = None) -> torch.Tensor:
        return torch.from_numpy(preprocess(img, self.view))  # [3, S, S] float32

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


def _aug_generator(seed: int, source: str, index: int, view: int) -> torch.Generator:
    # A hash, not seed + index arithmetic, so neighbouring images/views get unrelated streams.
    digest = hashlib.sha256(f"{seed}/{source}/{index}/{view}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


CROP_DRAWS = 14
"""Uniform draws per crop: 4 tries x (area, aspect ratio, flip), then the top and left offsets."""


def crop_boxes(u: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float]) -> torch.Tensor:
    """RandomResizedCrop's sampling (torchvision's), vectorised and in relative units: the one way crops are drawn.

    Up to 4 tries of (area uniform in ``scale``, aspect ratio log-uniform in ``ratio``); the first that fits
    inside the image is taken; when none fits, the largest crop of the clamped ratio, centred (torchvision's
    fallback). Cached views (:func:`sample_aug_params`, one crop at a time), online crops
    (:class:`TrainTransform`) and the pixel path's batches (:class:`BatchAugment`) all draw through here, so
    their crops have one distribution. The aspect ratio is relative to the image's own (exact for square
    images), which keeps the parameters independent of the image size.

    Args:
        u: ``[CROP_DRAWS, n]`` uniforms in [0, 1).
        scale: Range of the crop's area as a fraction of the image's.
        ratio: Range of the crop's aspect ratio.

    Returns:
        ``[n, 5]`` (top, left, height, width, flip) in relative units, ``u``'s dtype and device.
    """
    tries = u[:12].reshape(4, 3, -1)  # [try, (area, ratio, flip), n]
    area = scale[0] + (scale[1] - scale[0]) * tries[:, 0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(log_lo + (log_hi - log_lo) * tries[:, 1])
    w, h = torch.sqrt(area * r), torch.sqrt(area / r)  # [4, n]
    fits = (w <= 1.0) & (h <= 1.0)
    found = fits.any(0)
    k = torch.where(found, fits.to(torch.uint8).argmax(0), torch.full_like(found, 3, dtype=torch.long))[None]  # [1, n]
    r_c = min(max(1.0, ratio[0]), ratio[1])  # the fallback: the largest crop of the clamped ratio, centred
    w_c, h_c = (1.0, 1.0 / r_c) if r_c >= 1.0 else (r_c, 1.0)
    w = torch.where(found, w.gather(0, k)[0], torch.full_like(w[0], w_c))
    h = torch.where(found, h.gather(0, k)[0], torch.full_like(h[0], h_c))
    flip = (tries[:, 2].gather(0, k)[0] < 0.5).to(u.dtype)
    top = (1.0 - h) * torch.where(found, u[12], torch.full_like(u[12], 0.5))
    left = (1.0 - w) * torch.where(found, u[13], torch.full_like(u[13], 0.5))
    return torch.stack([top, left, h, w, flip], dim=1)


def _sample_crop(gen: torch.Generator | None, scale: tuple[float, float], ratio: tuple[float, float]) -> AugParams:
    """One crop through :func:`crop_boxes`, from ``gen`` (None: torch's global RNG)."""
    u = torch.rand(CROP_DRAWS, 1, generator=gen, dtype=torch.float64)  # fixed draw count: replay-stable
    top, left, h, w, flip = crop_boxes(u, scale, ratio)[0].tolist()
    return AugParams(top=top, left=left, height=h, width=w, flip=flip > 0.5)


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
    out = img.resize((view.image_size, view.image_size), RESAMPLE[view.interpolation], box=box)
    if p.flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(normalize(np.asarray(out), view))


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


class BatchAugment(torch.nn.Module):
    """Augment and normalise a whole batch of decoded pixels with tensor ops (on the GPU when the batch is there).

    Random-resized-crop and horizontal flip as one ``grid_sample`` per batch: each image's crop
    box (drawn by :func:`crop_boxes`, as the cached views' crops are) is resampled bilinearly to the
    batch's size.
    With ``aug`` off (evaluation) only the normalisation runs, so an eval batch equals
    ``data.views.preprocess`` of the same image.

    Args:
        view: The student's view (its mean and std are applied here).
        scale: Range of the crop's area as a fraction of the image's.
        ratio: Range of the crop's aspect ratio.
        pad: > 0: instead, pad-and-crop: a shift of up to ``pad`` pixels each way (zero padding), as CIFAR's
            ``RandomCrop(S, padding=pad)``, then the flip.
    """

    def __init__(self, view: ViewSpec, scale: tuple[float, float] = CACHED_CROP_SCALE,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), pad: int = 0) -> None:
        super().__init__()
        self.scale, self.ratio, self.pad = tuple(scale), tuple(ratio), pad
        self.register_buffer("mean", torch.tensor(view.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(view.std).view(1, 3, 1, 1), persistent=False)

    def boxes(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random resized crops ``[n, 5]`` (top, left, height, width, flip) in relative units, drawn by
        :func:`crop_boxes` as cached views are (pad-and-crop draws its shifts in ``_pad_crop``)."""
        return crop_boxes(torch.rand(CROP_DRAWS, n, device=device, generator=generator), self.scale, self.ratio)

    def forward(self, pixels: torch.Tensor, aug: bool, boxes: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """``pixels`` uint8 ``[B, S, S, 3]`` -> normalised float ``[B, 3, S, S]``.

        Args:
            pixels: Decoded images.
            aug: Crop and flip (training); off: only normalise (evaluation).
            boxes: ``[B, 5]`` crops to apply (e.g. cached views' ``AugParams``); None: drawn here.
            generator: RNG of the drawn crops (None: torch's global one).
        """
        if aug and self.pad and boxes is None:
            return self._normalize(self._pad_crop(pixels, generator))
        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)  # [B, 3, S, S]
        if aug:
            b = self.boxes(len(x), x.device, generator) if boxes is None else boxes.to(x.device, torch.float32)
            top, left, h, w, flip = b.unbind(1)
            theta = torch.zeros(len(x), 2, 3, device=x.device)
            theta[:, 0, 0] = w * (1 - 2 * flip)  # a negative x scale mirrors the crop
            theta[:, 0, 2] = 2 * left + w - 1  # crop centre, in grid units [-1, 1]
            theta[:, 1, 1] = h
            theta[:, 1, 2] = 2 * top + h - 1
            grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
            x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros" if self.pad else "reflection",
                                                align_corners=False)
        return self._normalize(x)

    def _pad_crop(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Pad-and-crop + flip of uint8 ``[B, S, S, 3]`` by index arithmetic (no resampling): float ``[B, 3, S, S]``."""
        B, S, p = len(pixels), pixels.shape[1], self.pad
        u = torch.randint(0, 2 * p + 1, (3, B), device=pixels.device, generator=generator)
        padded = torch.nn.functional.pad(pixels, (0, 0, p, p, p, p))  # [B, S + 2p, S + 2p, 3], zeros around
        ar = torch.arange(S, device=pixels.device)
        rows = (u[0, :, None] + ar)[:, :, None]  # [B, S, 1]
        cols = u[1, :, None] + ar  # [B, S]
        cols = torch.where((u[2] % 2 == 1)[:, None], cols.flip(1), cols)[:, None, :]  # mirrored for about half
        out = padded[torch.arange(B, device=pixels.device)[:, None, None], rows, cols]  # [B, S, S, 3]
        return out.permute(0, 3, 1, 2).float().div_(255.0)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
