"""Sources: one concrete image collection each (an STL10 binary file, an image folder, a tar, CIFAR-10, ...).

Teacher caches are computed per source, so carving a validation split or choosing a
labeled subset never invalidates a cache. Every source exposes ``key``, ``classes``,
``labels`` (int64, -1 where unlabeled), ``load(i) -> PIL RGB`` and a cheap ``identity()``.

CIFAR-10 and Fashion-MNIST are read by torchvision's readers. CIFAR-10's python files are
pickles: torchvision unpickles only files whose md5 is that of the official release, so a
planted ``data_batch_1`` is refused before it is opened. STL10 keeps its own reader: its
2.7 GB unlabeled file is read through a memory map, one 27,648-byte slice per image.

Large files are opened lazily and re-opened per process: DataLoader workers fork, and an
open file handle or memory map shared across processes is a source of subtle bugs (shared
file offsets) and of huge pickles (spawned workers would copy a memory-mapped array).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from edgedistill import storage
from edgedistill.config import DEFAULT_DATA_DIR
from edgedistill.data.images import (BadImageError, IMAGE_EXTENSIONS, Listing, decode_image, folder_key, is_image_name,
                                     list_images, require_images)
from edgedistill.errors import DataError

STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

DEMO_ARCHIVE = Path(__file__).parent / "demo" / "cifar10-demo.tar.gz"
DATA_DIR = Path(DEFAULT_DATA_DIR).expanduser()

__all__ = ["BadImageError", "CIFAR10Source", "FashionMNISTSource", "ImageFolderSource", "RelabeledSource", "STL10Binary",
           "Source", "UnlabeledImages", "describe_item", "extract_demo", "pool_sources"]


class Source(torch.utils.data.Dataset):
    """One image collection. ``source[i]`` is ``source.load(i)``: a PIL RGB image.

    Attributes:
        key: Stable name used in cache paths and batches, e.g. ``"stl10/train"``.
        classes: Class names; ``[]`` for purely unlabeled sources.
        labels: int64 ``[N]``; -1 where the source has no label.
    """

    key: str
    classes: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Image.Image:
        return self.load(i)

    def load(self, i: int) -> Image.Image:
        """The ``i``-th image as RGB; raises BadImageError if it cannot be decoded."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """JSON-able description of the content (kind, path, N, sizes/mtimes) for cache fingerprints."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r}, n={len(self)})"


def _file_stats(paths: list[Path]) -> dict[str, list[int]]:
    """``{name: [size, mtime_ns]}``: cheap content identity of a few large files."""
    out = {}
    for p in paths:
        st = p.stat()
        out[p.name] = [st.st_size, st.st_mtime_ns]
    return out


def _hash_file_list(root: Path, files: list[Path]) -> str:
    """sha256 of every file's relative path, size and mtime: changes when any image does."""
    h = hashlib.sha256()
    for p in files:
        try:
            st = p.stat()
        except OSError as e:
            raise DataError(f"Image {str(p)!r} disappeared or became unreadable while listing ({e.strerror})") from e
        h.update(f"{p.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))  # names need not be UTF-8
    return h.hexdigest()


def _report_skipped(listing: Listing, root: Path) -> None:
    """One warning for what a folder walk left out (broken links, link loops)."""
    parts = []
    if listing.broken_links:
        parts.append(f"{len(listing.broken_links)} broken symbolic link(s) (e.g. {listing.broken_links[0]})")
    if listing.loops:
        parts.append(f"{len(listing.loops)} folder(s) reached again through a symbolic link loop "
                     f"(e.g. {listing.loops[0]}; each folder is read once)")
    if parts:
        warnings.warn(f"{root}: skipped " + "; ".join(parts), stacklevel=3)


# --------------------------------------------------------------------------------------------
# STL10
# --------------------------------------------------------------------------------------------

STL10_FILES = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"), "unlabeled": ("unlabeled_X.bin", None)}
_STL10_IMAGE_BYTES = 3 * 96 * 96


def find_stl10_dir(root: str | os.PathLike) -> Path | None:
    """The ``stl10_binary`` folder under ``root`` (or ``root`` itself), or None if it has no ``train_X.bin``."""
    root = Path(root).expanduser()
    for d in (root / "stl10_binary", root):
        if (d / "train_X.bin").is_file():
            return d.resolve()
    return None


class STL10Binary(Source):
    """One part of STL10 in its official binary layout, read through a memory map.

    ``<dir>/{part}_X.bin`` holds N images of 3x96x96 uint8, each channel stored column-major
    (as the MATLAB original), so an image is read as ``[3, W, H]`` and transposed to
    ``[H, W, 3]``. ``{part}_y.bin`` holds labels 1..10, mapped to 0..9. ``unlabeled_X.bin``
    is 2.7 GB and is never read whole: one image is one 27,648-byte slice of the map.

    Args:
        directory: The ``stl10_binary`` folder.
        part: ``train``, ``test`` or ``unlabeled``.
    """

    def __init__(self, directory: str | os.PathLike, part: str) -> None:
        if part not in STL10_FILES:
            raise DataError(f"Unknown STL10 part {part!r}. Valid: {', '.join(STL10_FILES)}")
        self.dir = Path(directory).resolve()
        self.part = part
        self.key = f"stl10/{part}"
        x_name, y_name = STL10_FILES[part]
        self.x_path = self.dir / x_name
        if not self.x_path.is_file():
            raise DataError(f"STL10 file {self.x_path} is missing")
        size = self.x_path.stat().st_size
        n = size // _STL10_IMAGE_BYTES
        if size % _STL10_IMAGE_BYTES:
            warnings.warn(f"{self.x_path} is truncated ({size} bytes); reading its first {n} complete images", stacklevel=2)
        names_file = self.dir / "class_names.txt"
        self.classes = names_file.read_text().split() if names_file.is_file() else list(STL10_CLASSES)
        if y_name is None:
            self.labels = np.full(n, -1, dtype=np.int64)
            self.y_path = None
        else:
            self.y_path = self.dir / y_name
            if not self.y_path.is_file():
                raise DataError(f"STL10 label file {self.y_path} is missing")
            y = np.fromfile(self.y_path, dtype=np.uint8).astype(np.int64)
            if len(y) != n:
                raise DataError(f"{self.y_path} has {len(y)} labels but {self.x_path} has {n} images")
            if len(y) and (y.min() < 1 or y.max() > len(self.classes)):
                raise DataError(f"{self.y_path} has labels outside 1..{len(self.classes)}: min {y.min()}, max {y.max()}")
            self.labels = y - 1
        self._images: np.memmap | None = None
        self._pid = -1

    def _map(self) -> np.memmap:
        # One map per process: opened on first use, dropped when pickled to a worker.
        if self._images is None or self._pid != os.getpid():
            self._images = np.memmap(self.x_path, dtype=np.uint8, mode="r", shape=(len(self.labels), 3, 96, 96))
            self._pid = os.getpid()
        return self._images

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None, "_pid": -1}

    def load(self, i: int) -> Image.Image:
        chw_t = np.asarray(self._map()[i])  # [3, W, H]: column-major on disk
        return Image.fromarray(np.ascontiguousarray(chw_t.transpose(2, 1, 0)))  # [H, W, 3]

    def identity(self) -> dict[str, Any]:
        files = [self.x_path] + ([self.y_path] if self.y_path else [])
        return {"kind": "stl10_binary", "path": str(self.dir), "part": self.part, "n": len(self), "files": _file_stats(files)}


# --------------------------------------------------------------------------------------------
# Image folders and tars
# --------------------------------------------------------------------------------------------


class ImageFolderSource(Source):
    """Labeled images in ``<root>/<class>/**/*.{jpg,png,...}``; classes are the sorted folder names.

    Args:
        root: The folder holding one sub-folder per class.
        key: Source key, e.g. ``"demo/labeled"``.
        classes: Class names to index labels by (e.g. the train classes for a test folder);
            None: this folder's own sorted sub-folders. A folder not in ``classes`` is an error.

    Raises:
        DataError: no class folders, no images, a class folder that cannot be read.
    """

    def __init__(self, root: str | os.PathLike, key: str, classes: list[str] | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.key = key
        if not self.root.is_dir():
            raise DataError(f"Image folder {self.root} does not exist")
        folders = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not folders:
            raise DataError(f"Image folder {self.root} has no class sub-folders; expected <root>/<class>/*.jpg")
        self.classes = list(classes) if classes is not None else folders
        unknown = [f for f in folders if f not in self.classes]
        if unknown:
            raise DataError(f"Image folder {self.root} has classes {unknown} not in the training classes {self.classes}")
        self.files: list[Path] = []
        labels, empty, skipped = [], [], Listing()
        # One set of visited folders for every class walk, seeded with the root and all class
        # folders: a link from one class into another (or up to the root) is a loop, not more images.
        seen = {folder_key(self.root)} | {folder_key(self.root / name) for name in folders}
        for name in folders:
            listing = list_images(self.root / name, seen)
            if listing.unreadable:
                raise DataError(f"Class folder {self.root / name} (or a folder inside it: {listing.unreadable[0]}) "
                                "cannot be read (permissions?); fix it or move it out of the dataset")
            if not listing.files:
                empty.append(name)
            self.files += listing.files
            labels += [self.classes.index(name)] * len(listing.files)
            skipped.broken_links += listing.broken_links
            skipped.loops += listing.loops
        if not self.files:
            raise DataError(f"Image folder {self.root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        if empty:
            warnings.warn(f"Image folder {self.root}: class folder(s) {empty} hold no images; those classes "
                          "have no examples here", stacklevel=2)
        _report_skipped(skipped, self.root)
        self.labels = np.asarray(labels, dtype=np.int64)
        self._identity: dict | None = None

    def load(self, i: int) -> Image.Image:
        return decode_image(self.files[i])

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = {"kind": "imagefolder", "path": str(self.root), "n": len(self), "classes": self.classes,
                              "files_sha256": _hash_file_list(self.root, self.files)}
        return self._identity


class UnlabeledImages(Source):
    """Unlabeled images: a folder (searched recursively) or an uncompressed ``.tar`` of images.

    A tar's member offsets are indexed once; each image is one ``seek`` + ``read`` of the
    raw file, opened lazily per process so forked DataLoader workers never share a handle.

    Args:
        path: A folder or a ``.tar`` file.
        key: Source key, e.g. ``"demo/unlabeled"``.
        listing: The folder's ``list_images`` when the caller has already walked it (a pool can be large).
    """

    def __init__(self, path: str | os.PathLike, key: str, listing: Listing | None = None) -> None:
        self.path = Path(path).expanduser().resolve()
        self.key = key
        self.classes = []
        self._fh: io.BufferedReader | None = None
        self._pid = -1
        self._identity: dict | None = None
        if self.path.is_dir():
            self.is_tar = False
            listing = list_images(self.path) if listing is None else listing
            if listing.unreadable:
                raise DataError(f"Unlabeled images {self.path}: cannot read folder {listing.unreadable[0]} (permissions?)")
            _report_skipped(listing, self.path)
            self.files = listing.files
            n = len(self.files)
        elif self.path.is_file() and tarfile.is_tarfile(self.path):
            self.is_tar = True
            self._index_tar()
            n = len(self.names)
        else:
            raise DataError(f"Unlabeled images {str(path)!r}: not a folder or a .tar file of images")
        if n == 0:
            raise DataError(f"Unlabeled images {self.path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.labels = np.full(n, -1, dtype=np.int64)

    def _index_tar(self) -> None:
        try:
            tf = tarfile.open(self.path, mode="r:")  # plain tar only: compressed streams cannot seek
        except tarfile.ReadError as e:
            raise DataError(f"{self.path} is a compressed tar; random access needs an uncompressed one "
                            f"(e.g. `gunzip -k {self.path.name}`) or an extracted folder") from e
        names, offsets, sizes = [], [], []
        with tf:
            for m in tf:
                if m.isfile() and is_image_name(Path(m.name).name):
                    names.append(m.name)
                    offsets.append(m.offset_data)
                    sizes.append(m.size)
        self.names = names
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._sizes = np.asarray(sizes, dtype=np.int64)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fh": None, "_pid": -1}

    def load(self, i: int) -> Image.Image:
        if not self.is_tar:
            return decode_image(self.files[i])
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open for the life of this process
            self._pid = os.getpid()
        self._fh.seek(int(self._offsets[i]))
        return decode_image(self._fh.read(int(self._sizes[i])), f"{self.path}:{self.names[i]}")

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            if self.is_tar:
                self._identity = {"kind": "tar", "path": str(self.path), "n": len(self), "files": _file_stats([self.path])}
            else:
                self._identity = {"kind": "folder", "path": str(self.path), "n": len(self),
                                  "files_sha256": _hash_file_list(self.path, self.files)}
        return self._identity


def safe_name(name: str, default: str) -> str:
    """``name`` with every run of characters other than letters, digits and ``_.-`` made ``_`` (keys name cache
    folders); ``default`` when nothing is left."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or default


def unique_key(base: str, taken: set[str]) -> str:
    """``base``, else ``base-2``, ``base-3``, ...: the first not in ``taken``."""
    key, n = base, 2
    while key in taken:
        key, n = f"{base}-{n}", n + 1
    return key


def pool_sources(paths: list[str], prefix: str = "pool") -> list[Source]:
    """An unlabeled pool as sources: each folder's images (searched recursively) and each ``.tar`` in or given.

    A webdataset shard (``000123.jpg`` beside ``000123.json`` / ``.cls``) is a tar whose image members are
    taken and the rest ignored; a folder of shards gives one source per shard, so the teacher cache is
    computed, resumed and shared shard by shard. Keys are ``<prefix>/<name>`` (``<prefix>/<folder>~<shard>``).

    Raises:
        DataError: a path that does not exist, or holds neither images nor tars.
    """
    out: list[Source] = []

    def key(*names: str) -> str:  # a shard's key is a sibling of its folder's ("pool/shards~000123"), not inside it
        return unique_key(f"{prefix}/" + "~".join(safe_name(n.removesuffix(".tar"), "images") for n in names),
                          {s.key for s in out})

    for path in paths:
        p = Path(path).expanduser()
        if p.is_file():
            out.append(UnlabeledImages(p, key(p.name)))
            continue
        if not p.is_dir():
            raise DataError(f"Pool path {str(path)!r} does not exist (expected a folder, a .tar or a folder of .tar shards)")
        listing = list_images(p.resolve())  # the walk UnlabeledImages takes (it lists the resolved folder)
        require_images(listing, p, "Pool folder")
        tars = sorted(t for t in p.rglob("*.tar") if t.is_file() and not t.name.startswith("."))
        if not listing.files and not tars:
            raise DataError(f"Pool folder {str(path)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}) and no .tar shards")
        if listing.files:
            out.append(UnlabeledImages(p, key(p.name), listing))
        out += [UnlabeledImages(t, key(p.name, t.relative_to(p).as_posix())) for t in tars]
    return out


class RelabeledSource(Source):
    """Another source's images with labels given here (a retrieval manifest's classes).

    Key and identity are the base source's, so the teacher cache computed on the pool is the one read.

    Args:
        base: The source (a pool source).
        classes: Class names.
        labels: int64 ``[len(base)]``: a class index, or -1 for images not in the labelled set.
    """

    def __init__(self, base: Source, classes: list[str], labels: np.ndarray) -> None:
        if len(labels) != len(base):
            raise DataError(f"{len(labels)} labels for the {len(base)} images of {base.key!r}")
        self.base, self.key, self.classes = base, base.key, list(classes)
        self.labels = np.asarray(labels, dtype=np.int64)

    def load(self, i: int) -> Image.Image:
        return self.base.load(i)

    def identity(self) -> dict[str, Any]:
        return self.base.identity()


def describe_item(source: Source, i: int) -> str:
    """Where image ``i`` of a source is, for people and manifests: a file path, or ``<tar>::<member>``."""
    base = getattr(source, "base", source)
    if getattr(base, "is_tar", False):
        return f"{base.path}::{base.names[i]}"
    if hasattr(base, "files"):
        return str(base.files[i])
    return f"{base.key}#{i}"


# --------------------------------------------------------------------------------------------
# CIFAR-10 and Fashion-MNIST, through torchvision's readers
# --------------------------------------------------------------------------------------------


def find_cifar10_pickles(root: str | os.PathLike) -> Path | None:
    """The ``cifar-10-batches-py`` folder at or under ``root``, or None."""
    root = Path(root).expanduser()
    for d in (root / "cifar-10-batches-py", root):
        if (d / "data_batch_1").is_file() and d.name == "cifar-10-batches-py":
            return d.resolve()
    return None


class CIFAR10Source(Source):
    """CIFAR-10 from the official ``cifar-10-batches-py`` release, read by ``torchvision.datasets.CIFAR10``.

    torchvision checks every file's md5 against the official release before unpickling it,
    so only the genuine files are ever unpickled; anything else is refused with a DataError.
    The images are held in memory (150 MB for train), which forked workers share copy-on-write.
    For CIFAR-10 as an ImageFolder tree, ``build_splits`` uses an ImageFolderSource instead.

    Args:
        directory: The ``cifar-10-batches-py`` folder.
        part: ``train`` (data_batch_1..5) or ``test`` (test_batch).
    """

    def __init__(self, directory: str | os.PathLike, part: str = "train") -> None:
        from torchvision.datasets import CIFAR10

        if part not in ("train", "test"):
            raise DataError(f"Unknown CIFAR-10 part {part!r}. Valid: train, test")
        self.dir = Path(directory).resolve()
        self.part, self.key = part, f"cifar10/{part}"
        try:
            ds = CIFAR10(str(self.dir.parent), train=part == "train", download=False)
        except RuntimeError as e:  # md5 mismatch or a missing file: nothing was unpickled
            raise DataError(f"{self.dir} does not hold the official CIFAR-10 python files ({e}); their md5 must "
                            "match the release at https://www.cs.toronto.edu/~kriz/cifar.html (re-download it, or "
                            "use an ImageFolder tree train/<class>/*.png)") from None
        self._images = ds.data  # [N, 32, 32, 3] uint8
        self.labels = np.asarray(ds.targets, dtype=np.int64)
        self.classes = list(ds.classes)
        names = CIFAR10.train_list if part == "train" else CIFAR10.test_list
        self.paths = [self.dir / n for n, _ in names]

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self._images[i])

    def identity(self) -> dict[str, Any]:
        return {"kind": "cifar10_pickle", "path": str(self.dir), "part": self.part, "n": len(self), "files": _file_stats(self.paths)}


FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def find_fashion_mnist(root: str | os.PathLike) -> Path | None:
    """The folder holding ``train-images-idx3-ubyte[.gz]``: ``root``, ``root/raw`` or ``root/FashionMNIST/raw``."""
    root = Path(root).expanduser()
    for d in (root, root / "raw", root / "FashionMNIST" / "raw"):
        if any((d / f"train-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz")):
            return d.resolve()
    return None


def _fashion_mnist_root(found: Path) -> Path:
    """A torchvision ``<root>/FashionMNIST/raw/`` tree of uncompressed idx files for the files in ``found``.

    torchvision reads the uncompressed files only; Debian's ``dataset-fashion-mnist`` and the
    original release ship ``.gz``. Those are decompressed once (atomically) under the data dir,
    in a folder named after the source folder and its files' sizes and mtimes, so replacing
    the files gives a fresh copy instead of silently reading the old images.
    """
    if found.name == "raw" and found.parent.name == "FashionMNIST" and all((found / f).is_file() for f in FASHION_MNIST_FILES[:2]):
        return found.parent.parent
    present = sorted(p for name in FASHION_MNIST_FILES for p in (found / name, found / f"{name}.gz") if p.is_file())
    stamp = [str(found)] + [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in present]
    digest = hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:12]
    root = DATA_DIR / f"fashion_mnist-{digest}"
    raw = root / "FashionMNIST" / "raw"
    for name in FASHION_MNIST_FILES:
        target = raw / name
        if target.is_file():
            continue
        if (found / name).is_file():
            storage.write_bytes(target, (found / name).read_bytes())
        elif (found / f"{name}.gz").is_file():
            try:
                data = gzip.decompress((found / f"{name}.gz").read_bytes())
            except (OSError, EOFError) as e:  # BadGzipFile, truncated stream
                raise DataError(f"{found / name}.gz is not a readable gzip file ({type(e).__name__}: {e})") from None
            storage.write_bytes(target, data)
    return root


class FashionMNISTSource(Source):
    """Fashion-MNIST (idx-ubyte files, optionally ``.gz``) read by ``torchvision.datasets.FashionMNIST``; RGB out.

    Args:
        directory: The folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        part: ``train`` or ``test``.
    """

    def __init__(self, directory: str | os.PathLike, part: str = "train") -> None:
        from torchvision.datasets import FashionMNIST

        if part not in ("train", "test"):
            raise DataError(f"Unknown Fashion-MNIST part {part!r}. Valid: train, test")
        self.dir = Path(directory).resolve()
        self.part, self.key = part, f"fashion_mnist/{part}"
        prefix = "train" if part == "train" else "t10k"
        stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
        self.paths = [next((self.dir / f"{s}{ext}" for ext in ("", ".gz") if (self.dir / f"{s}{ext}").is_file()), None)
                      for s in stems]
        if None in self.paths:
            raise DataError(f"Fashion-MNIST {part} files {stems[0]}[.gz] / {stems[1]}[.gz] missing in {self.dir}")
        try:
            ds = FashionMNIST(str(_fashion_mnist_root(self.dir)), train=part == "train", download=False)
        except (RuntimeError, ValueError, TypeError, AssertionError) as e:  # TypeError: not uint8 pixels
            raise DataError(f"Fashion-MNIST files in {self.dir} are not valid idx-ubyte files ({e})") from None
        self._images = ds.data.numpy()  # [N, 28, 28] uint8
        self.labels = ds.targets.numpy().astype(np.int64)
        self.classes = list(ds.classes)
        if len(self._images) != len(self.labels):
            raise DataError(f"{self.paths[0]} has {len(self._images)} images but {self.paths[1]} {len(self.labels)} labels")

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self._images[i]).convert("RGB")

    def identity(self) -> dict[str, Any]:
        return {"kind": "fashion_mnist_idx", "path": str(self.dir), "part": self.part, "n": len(self), "files": _file_stats(self.paths)}


# --------------------------------------------------------------------------------------------
# The bundled demo archive
# --------------------------------------------------------------------------------------------


def demo_archive_hash() -> str:
    """First 12 hex digits of the bundled archive's sha256 (names its default extraction folder)."""
    return hashlib.sha256(DEMO_ARCHIVE.read_bytes()).hexdigest()[:12]


def extract_demo(target: str | os.PathLike | None = None) -> Path:
    """Extract the bundled CIFAR-10 demo subset once; return the folder holding ``labeled/ eval/ unlabeled/``.

    Extraction goes to a temp folder beside ``target`` and is renamed into place, so an
    interrupted or concurrent extraction never leaves a half-written tree behind.

    Args:
        target: Where the tree goes; None: ``~/.cache/edgedistill-data/cifar10-demo-<hash>``.
    """
    target = Path(target).expanduser() if target else DATA_DIR / f"cifar10-demo-{demo_archive_hash()}"
    if (target / "labeled").is_dir():
        return target.resolve()
    if target.exists() and any(target.iterdir()):
        raise DataError(f"data.root={str(target)!r} exists but holds no demo tree (labeled/, eval/, unlabeled/); "
                        "pass an empty or new folder, or leave data.root unset")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with tarfile.open(DEMO_ARCHIVE) as tf:
            tf.extractall(tmp, filter="data")
        tree = tmp / "cifar10-demo"
        try:
            os.rename(tree, target)  # atomic; also replaces an empty target folder
        except OSError:
            if not (target / "labeled").is_dir():  # not a concurrent extraction that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target.resolve()
