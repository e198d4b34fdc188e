"""Finding and decoding image files: the one suffix list, the one safe folder walk, the one decoder.

Torch-free (PIL, numpy and the standard library), so the deploy runtime uses the same rules as
training: which files are images, how a folder is searched, what counts as unreadable, and how
pixels become 8-bit RGB (:func:`to_rgb`: EXIF orientation applied, 16-bit and float images
scaled rather than clipped), in training, the teacher cache and ``predict`` alike.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from edgedistill.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class BadImageError(Exception):
    """One image that cannot be decoded. Per item, so not an EdgeDistillError: jobs skip it and count it."""


def is_image_name(name: str) -> bool:
    """True for a non-hidden file name with an image suffix (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


@dataclass
class Listing:
    """The image files below a folder, and what the walk had to leave out.

    Attributes:
        files: Image paths, sorted by their path relative to the root (deterministic order).
        broken_links: Symbolic links to nothing (or to a loop) whose name looks like an image.
        loops: Folders reached again through a symbolic link (each visited once).
        unreadable: Folders that could not be listed (permissions).
    """

    files: list[Path] = field(default_factory=list)
    broken_links: list[Path] = field(default_factory=list)
    loops: list[Path] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)


def folder_key(path: str | os.PathLike) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of a folder (links followed): what ``list_images`` means by "the same folder"."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def list_images(root: str | os.PathLike, seen: set[tuple[int, int]] | None = None) -> Listing:
    """All image files below ``root``, following symbolic links but visiting each real folder once.

    Symbolic-link loops (``cat/up -> ..``) would otherwise repeat the tree without end and
    label one class's files as another's; a folder whose (device, inode) was already visited
    is skipped and recorded (folders reachable without a link are visited first, so the
    link is what is recorded). A folder that cannot be listed is recorded, not silently dropped.

    Args:
        root: The folder to search (always entered, even if its key is in ``seen``).
        seen: Keys (``folder_key``) of folders not to enter below ``root``; updated in place with
            every folder visited. An image folder passes one set, seeded with its root and
            every class folder, to each class's walk, so a link from one class into another
            class (or back up to the dataset root) is reported as a loop instead of
            listing the other class's images under this class's label.
    """
    root = Path(root)
    out = Listing()
    seen = set() if seen is None else seen
    # Folders reached through a link wait until every folder reachable without one is visited,
    # so a folder is listed under its real path and the link is what gets reported as the loop.
    stack, linked = [root], []
    while stack or linked:
        folder = stack.pop() if stack else linked.pop(0)
        try:
            st = folder.stat()
        except OSError:
            out.unreadable.append(folder)
            continue
        if (st.st_dev, st.st_ino) in seen and folder is not root:
            out.loops.append(folder)
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            out.unreadable.append(folder)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                mode = os.stat(path).st_mode  # follows links; raises for broken or looping ones
            except OSError:
                if is_image_name(entry.name):
                    out.broken_links.append(path)
                continue
            if stat.S_ISDIR(mode):
                (linked if entry.is_symlink() else stack).append(path)
            elif stat.S_ISREG(mode) and is_image_name(entry.name):
                out.files.append(path)
    out.files.sort(key=lambda p: p.relative_to(root).as_posix())
    return out


# Modes whose samples are wider than 8 bits: PIL's convert("RGB") clips them at 255 (a 16-bit photo turns white).
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _wide_to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit / 32-bit-integer / float single-channel image as 8-bit ``L``, scaled by its bit depth.

    Integer modes hold 16-bit samples (what PNG and TIFF decode to): 0..65535 -> 0..255. Float
    images in 0..1 are scaled by 255; any other float range is treated as 16-bit.
    """
    arr = np.asarray(img, dtype=np.float64)
    scale = 255.0 if img.mode == "F" and arr.size and float(np.nanmax(arr)) <= 1.0 else 255.0 / 65535.0
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """The 8-bit RGB image a model sees: EXIF orientation applied, wide (16-bit, float) samples scaled, not clipped.

    The one conversion of training, the teacher cache, ``predict`` and the deploy API.
    """
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # phone photos: stored sideways, tagged
        img = ImageOps.exif_transpose(img)
    if img.mode in _WIDE_MODES:
        img = _wide_to_8bit(img)
    return img if img.mode == "RGB" else img.convert("RGB")


def decode_image(data: bytes | str | os.PathLike, what: str | None = None) -> Image.Image:
    """Decode an image file or its bytes fully to RGB (:func:`to_rgb`; ``load`` forces the read, so truncation
    surfaces here).

    Raises:
        BadImageError: the file cannot be opened or decoded (message names it).
    """
    what = what or str(data if not isinstance(data, bytes) else "<bytes>")
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img.load()
            out = to_rgb(img)
            return out if out is not img else img.copy()
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, struct.error, ... on corrupt files
        raise BadImageError(f"cannot read image {what}: {type(e).__name__}: {e}") from e


def require_images(listing: Listing, root: Path, what: str) -> None:
    """Refuse a walk that lost folders: an unreadable folder would silently drop a whole class."""
    if listing.unreadable:
        shown = ", ".join(str(p) for p in listing.unreadable[:3])
        raise DataError(f"{what} {root}: cannot read folder(s) {shown}"
                        f"{' ...' if len(listing.unreadable) > 3 else ''} (permissions?); fix them or move them away")
