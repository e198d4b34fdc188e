"""Splits: which (source, index) pairs make up ``train``, ``val``, ``test`` and ``unlabeled``.

``build_splits`` opens a dataset's sources and carves, deterministically by ``cfg.seed``:
  1. the labeled pool = the labeled training source(s);
  2. with ``labeled_per_class=k``: k images per class stay labeled, the rest join
     ``unlabeled`` with their labels hidden;
  3. ``val`` = a stratified ``val_fraction`` of what stays labeled; ``train`` = the rest;
  4. with ``max_unlabeled=m``: a seeded random subset of m images of ``unlabeled`` (nested in m).
``test`` is the dataset's own test split, read only for final numbers. Splits are lists of
``SplitPart``\\ s (a source and sorted indices), so caches stay per source.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import default_collate

from edgedistill.config import DataConfig, split_names
from edgedistill.console import warn_once
from edgedistill.data.manifest import manifest_sources
from edgedistill.data.sources import (
    CIFAR10_CLASSES,
    DATA_DIR,
    BadImageError,
    CIFAR10Source,
    FashionMNISTSource,
    ImageFolderSource,
    Source,
    STL10Binary,
    UnlabeledImages,
    extract_demo,
    find_cifar10_pickles,
    find_fashion_mnist,
    find_stl10_dir,
    pool_sources,
    safe_name,
    unique_key,
)
from edgedistill.errors import DataError
from edgedistill.prompts import class_names, read_prompts

SPLITS = ("train", "val", "test", "unlabeled")
DEFAULT_FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")


class BadImageWarning(UserWarning):
    """An image was skipped because it cannot be decoded."""


def _warn_bad(message: str) -> None:
    warn_once(f"skipping {message}", BadImageWarning)  # once per bad file, however many epochs


@dataclass
class SplitPart:
    """The images of one source that belong to a split.

    Attributes:
        source: Source key.
        indices: int64 ``[n]``, sorted indices within the source.
        labeled: False: labels are hidden (-1) in this split even if the source has them.
    """

    source: str
    indices: np.ndarray
    labeled: bool


class _Batch(list):
    """A list of items that also carries ``bad``: (source, index) of the items that are None."""

    bad: list[tuple[str, int]]


class SplitDataset(torch.utils.data.Dataset):
    """The concatenation of split parts; items are dicts, or None for an unreadable image.

    Item: ``{"image": transform(pil, source, index), "label": int (-1 hidden), "source": str,
    "index": int (within the source)}``. A transform that returns a dict (``TrainTransform``)
    is merged into the item instead of being stored under ``"image"``.
    """

    def __init__(self, sources: dict[str, Source], parts: list[SplitPart], transform: Callable | None) -> None:
        self.sources = sources
        self.parts = parts
        self.transform = transform
        self._ends = np.cumsum([len(p.indices) for p in parts], dtype=np.int64)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def locate(self, j: int) -> tuple[SplitPart, int]:
        """The part and the index within its source of dataset position ``j``."""
        if not -len(self) <= j < len(self):
            raise IndexError(f"index {j} out of range for a dataset of {len(self)} images")
        j = j % len(self)
        k = int(np.searchsorted(self._ends, j, side="right"))
        start = int(self._ends[k - 1]) if k else 0
        return self.parts[k], int(self.parts[k].indices[j - start])

    @property
    def labels(self) -> np.ndarray:
        """int64 ``[len(self)]``: visible labels, -1 where hidden."""
        return np.concatenate([np.zeros(0, dtype=np.int64)] + [self.sources[p.source].labels[p.indices] if p.labeled
                               else np.full(len(p.indices), -1, dtype=np.int64) for p in self.parts])

    def __getitem__(self, j: int) -> dict[str, Any] | None:
        part, i = self.locate(j)
        source = self.sources[part.source]
        try:
            img = source.load(i)
        except BadImageError as e:
            _warn_bad(str(e))
            return None
        out = self.transform(img, part.source, i) if self.transform is not None else img
        item = {"label": int(source.labels[i]) if part.labeled else -1, "source": part.source, "index": i}
        if isinstance(out, dict):
            item.update(out)
        else:
            item["image"] = out
        return item

    def __getitems__(self, js: list[int]) -> _Batch:
        # DataLoader fetches batches through __getitems__ when present: this is how the
        # collate function learns *which* items were unreadable, while items stay None.
        batch = _Batch(self[j] for j in js)
        batch.bad = []
        for j, item in zip(js, batch):
            if item is None:
                part, i = self.locate(j)
                batch.bad.append((part.source, i))
        return batch


def collate_skip_bad(batch: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Stack a batch, dropping unreadable (None) items and counting them.

    Returns:
        ``{"image": [B, 3, H, W], "label": [B], "source": list[str], "index": [B], ...
        "n_bad": int, "bad": list[(source, index)]}`` (plus any other keys the transform
        returned, e.g. ``teacher_image``, ``view``), or None when every item was bad.
        ``bad`` is filled when the batch came through ``SplitDataset`` in a DataLoader.
    """
    good = [b for b in batch if b is not None]
    if not good:
        return None
    out = default_collate(good)
    out["n_bad"] = len(batch) - len(good)
    out["bad"] = list(getattr(batch, "bad", []))
    return out


@dataclass
class DataSplits:
    """A dataset's sources and splits.

    Attributes:
        sources: Source key -> Source.
        classes: Class names of the labeled data.
        parts: Split name -> parts; splits the dataset lacks are absent.
        manifest: dataset, root, seed, val_fraction, labeled_per_class, counts per split, ...
    """

    sources: dict[str, Source]
    classes: list[str]
    parts: dict[str, list[SplitPart]]
    manifest: dict[str, Any]

    def parts_of(self, spec: str) -> list[SplitPart]:
        """The parts (source, indices, labeled) of ``spec``, in order."""
        return self._parts(spec)

    def _parts(self, spec: str) -> list[SplitPart]:
        names = split_names(spec)
        for name in names:
            if name not in self.parts:
                raise DataError(f"Unknown split {name!r} in {spec!r} for dataset {self.manifest['dataset']!r}. "
                                f"Valid: {', '.join(self.parts)} (join with '+', e.g. 'train+unlabeled')")
        return [p for name in names for p in self.parts[name]]

    def size(self, spec: str | None) -> int:
        """Number of images in ``spec``; 0 for None or for standard splits this dataset lacks."""
        if not spec:
            return 0
        return sum(len(p.indices) for name in split_names(spec) for p in self.parts.get(name, []))

    def hidden(self, spec: str) -> int:
        """Number of images of ``spec`` whose labels are hidden (the unlabeled data it uses)."""
        return sum(len(p.indices) for name in split_names(spec) for p in self.parts.get(name, []) if not p.labeled)

    def sources_of(self, spec: str) -> list[str]:
        """Keys of the sources touched by ``spec``, in first-use order.

        A standard split this dataset lacks (e.g. ``unlabeled`` of a plain image folder) holds no
        images and is skipped; an unknown name, or a spec of only missing splits, is an error.
        """
        names = split_names(spec)
        unknown = [s for s in names if s not in SPLITS and s not in self.parts]
        present = [s for s in names if s in self.parts]
        if unknown or not present:
            raise DataError(f"Split {spec!r} names {unknown or names} that this dataset does not have. "
                            f"Valid: {', '.join(self.parts)} (join with '+', e.g. 'train+val')")
        keys: list[str] = []
        for name in present:
            for part in self.parts[name]:
                if len(part.indices) and part.source not in keys:
                    keys.append(part.source)
        return keys

    def dataset(self, spec: str, transform: Callable | None) -> SplitDataset:
        """The images of ``spec`` (e.g. ``"train"``, ``"train+unlabeled"``), called through ``transform(pil, source, index)``."""
        return SplitDataset(self.sources, self._parts(spec), transform)

    def labels(self, spec: str) -> np.ndarray:
        """int64 ``[N]``: the visible labels of ``spec``, -1 where hidden, in dataset order."""
        return SplitDataset(self.sources, self._parts(spec), None).labels


# --------------------------------------------------------------------------------------------
# Opening each dataset's sources
# --------------------------------------------------------------------------------------------


def _find_or_download(name: str, root: Path, cfg: DataConfig, find: Callable[[Path], Path | None],
                      download: Callable[[], Any], missing: str, expected: str) -> Path:
    """``find(root)``, else (with ``data.download``) download through torchvision and find again.

    Args:
        missing: the error when the files are absent and downloading is off.
        expected: the file a successful download must have left (named in the error otherwise).
    """
    found = find(root)
    if found is not None:
        return found
    if not cfg.download:
        raise DataError(missing)
    try:
        download()
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise DataError(f"Downloading {name} into {root} failed ({type(e).__name__}: {e}). Without internet, "
                        f"put the files there yourself and pass --data.root") from e
    found = find(root)
    if found is None:
        raise DataError(f"{name} download into {root} left no {expected}")
    return found


def _torchvision():
    import torchvision  # only when downloading: importing it costs a second

    return torchvision


def _stl10(cfg: DataConfig) -> tuple[Path, list[Source], list[Source], list[Source]]:
    root = Path(cfg.root).expanduser() if cfg.root else DATA_DIR / "stl10"
    d = _find_or_download(
        "STL10", root, cfg, find_stl10_dir,
        lambda: _torchvision().datasets.STL10(str(root), split="train", download=True),
        missing=f"STL10 not found: expected {root / 'stl10_binary'}/{{train_X.bin, train_y.bin, test_X.bin, "
                f"test_y.bin, unlabeled_X.bin, class_names.txt}}. Pass --data.download true to download it "
                f"(2.6 GB) or --data.root to the folder containing stl10_binary/",
        expected="stl10_binary/train_X.bin")
    unlabeled = [STL10Binary(d, "unlabeled")] if (d / "unlabeled_X.bin").is_file() else []
    return d.parent, [STL10Binary(d, "train")], [STL10Binary(d, "test")], unlabeled


def _cifar10(cfg: DataConfig) -> tuple[Path, list[Source], list[Source], list[Source]]:
    root = Path(cfg.root).expanduser() if cfg.root else DATA_DIR
    pickles = find_cifar10_pickles(root)
    if pickles is None and (root / "train").is_dir():
        train = ImageFolderSource(root / "train", "cifar10/train")
        test = [ImageFolderSource(root / "test", "cifar10/test", train.classes)] if (root / "test").is_dir() else []
        return root.resolve(), [train], test, []
    if pickles is None and root.is_dir() and sorted(p.name for p in root.iterdir() if p.is_dir()) == CIFAR10_CLASSES:
        return root.resolve(), [ImageFolderSource(root, "cifar10/train")], [], []
    if pickles is None:
        pickles = _find_or_download(
            "CIFAR-10", root, cfg, find_cifar10_pickles,
            lambda: _torchvision().datasets.CIFAR10(str(root), train=True, download=True),
            missing=f"CIFAR-10 not found under data.root={str(root)!r}: expected cifar-10-batches-py/ (pickles), "
                    f"train/<class>/*.jpg, or <class>/*.jpg. Pass --data.download true or another --data.root",
            expected="cifar-10-batches-py/data_batch_1")
    test = [CIFAR10Source(pickles, "test")] if (pickles / "test_batch").is_file() else []
    return pickles, [CIFAR10Source(pickles, "train")], test, []


def _fashion_mnist(cfg: DataConfig) -> tuple[Path, list[Source], list[Source], list[Source]]:
    root = Path(cfg.root).expanduser() if cfg.root else DEFAULT_FASHION_MNIST_ROOT
    d = _find_or_download(
        "Fashion-MNIST", root, cfg, find_fashion_mnist,
        lambda: _torchvision().datasets.FashionMNIST(str(root), train=True, download=True),
        missing=f"Fashion-MNIST not found under data.root={str(root)!r}: expected train-images-idx3-ubyte[.gz] "
                f"there, in raw/ or FashionMNIST/raw/. Pass --data.download true or another --data.root",
        expected="train-images-idx3-ubyte")
    has_test = any((d / f"t10k-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz"))
    test = [FashionMNISTSource(d, "test")] if has_test else []
    return d, [FashionMNISTSource(d, "train")], test, []


def _imagefolder(cfg: DataConfig) -> tuple[Path, list[Source], list[Source], list[Source]]:
    if cfg.root is None:
        raise DataError("data.dataset='imagefolder' needs --data.root: a folder of <class>/*.jpg, or with train/ and test/ (or val/) inside")
    root = Path(cfg.root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data.root={cfg.root!r} is not a folder")
    name = safe_name(root.name, "imagefolder")  # key names a cache folder
    if (root / "train").is_dir():
        train = ImageFolderSource(root / "train", f"{name}/train")
        held = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
        test = [ImageFolderSource(held, f"{name}/test", train.classes)] if held else []
        return root, [train], test, []
    return root, [ImageFolderSource(root, f"{name}/train")], [], []


def _demo(cfg: DataConfig) -> tuple[Path, list[Source], list[Source], list[Source]]:
    d = extract_demo(cfg.root)
    labeled = ImageFolderSource(d / "labeled", "demo/labeled")
    return d, [labeled], [ImageFolderSource(d / "eval", "demo/eval", labeled.classes)], [UnlabeledImages(d / "unlabeled", "demo/unlabeled")]


def _held_out(cfg: DataConfig, classes: list[str]) -> list[Source]:
    """The labelled folder of a pool or manifest (its class folders among ``classes``), read as ``test``."""
    if cfg.held_out is None:
        return []
    root = Path(cfg.held_out).expanduser()
    name = safe_name(root.resolve().name, "held_out")
    return [ImageFolderSource(root, f"held_out/{name}", classes)]


def _prompt_classes(cfg: DataConfig) -> list[str]:
    """The classes of a dataset without class folders (a pool): its prompts file's."""
    return class_names(read_prompts(cfg.prompts))


def _pool(cfg: DataConfig) -> tuple[Path, list[Source], list[Source], list[Source]]:
    """Unlabeled images only (the ``unlabeled`` split); the classes are the prompts file's."""
    paths = ([cfg.root] if cfg.root else []) + list(cfg.unlabeled)
    return Path(paths[0]).expanduser().resolve(), [], _held_out(cfg, _prompt_classes(cfg)), pool_sources(paths)


def _manifest(cfg: DataConfig) -> tuple[Path, list[Source], list[Source], list[Source]]:
    """The images a retrieval kept, labelled with their classes (the pool's sources, so its caches are reused)."""
    classes, labeled = manifest_sources(cfg.root)
    return Path(cfg.root).expanduser().resolve(), labeled, _held_out(cfg, classes), []


_OPENERS = {"stl10": _stl10, "cifar10": _cifar10, "fashion_mnist": _fashion_mnist, "imagefolder": _imagefolder, "demo": _demo,
            "pool": _pool, "manifest": _manifest}


# --------------------------------------------------------------------------------------------
# Carving the splits
# --------------------------------------------------------------------------------------------


def _to_parts(keys: np.ndarray, idx: np.ndarray, order: list[str], labeled: bool) -> list[SplitPart]:
    """Group (source key, index) pairs into one sorted SplitPart per source."""
    return [SplitPart(k, np.sort(idx[keys == k]).astype(np.int64), labeled) for k in order if (keys == k).any()]


def build_splits(cfg: DataConfig) -> DataSplits:
    """Open ``cfg.dataset`` and carve train / val / test / unlabeled, deterministically by ``cfg.seed``.

    Raises:
        DataError: missing or malformed data, or an extra unlabeled path that is not images.
    """
    root, labeled, test, unlabeled = _OPENERS[cfg.dataset](cfg)
    for path in cfg.unlabeled if cfg.dataset not in ("pool", "manifest") else []:  # a pool's own paths are opened
        stem = safe_name(Path(path).name.removesuffix(".tar"), "images")
        unlabeled.append(UnlabeledImages(path, unique_key(f"extra/{stem}", {s.key for s in unlabeled})))
    sources = {s.key: s for s in labeled + test + unlabeled}
    classes = labeled[0].classes if labeled else _prompt_classes(cfg)  # a pool has no labeled source

    # The labeled pool, one row per image; one seeded permutation decides everything below.
    keys = np.concatenate([np.zeros(0, dtype=object)] + [np.full(len(s), s.key, dtype=object) for s in labeled])
    idx = np.concatenate([np.zeros(0, np.int64)] + [np.arange(len(s), dtype=np.int64) for s in labeled])
    lab = np.concatenate([np.zeros(0, np.int64)] + [s.labels for s in labeled])
    perm = np.random.default_rng(cfg.seed).permutation(len(lab))
    val_rows, train_rows, hidden_rows = [], [], []
    for c in range(len(classes)):
        rows = perm[lab[perm] == c]  # this class, in permuted order
        keep = rows[: cfg.labeled_per_class] if cfg.labeled_per_class else rows
        hidden_rows.append(rows[len(keep):])
        n_val = int(round(len(keep) * cfg.val_fraction))
        if cfg.val_fraction > 0 and n_val == 0 and len(keep) > 1:
            n_val = 1  # every class is represented in val, however few labels it has
        val_rows.append(keep[:n_val])
        train_rows.append(keep[n_val:])
    order = [s.key for s in labeled]
    val_rows, train_rows, hidden_rows = (np.concatenate(r) if r else np.zeros(0, np.int64) for r in (val_rows, train_rows, hidden_rows))

    parts: dict[str, list[SplitPart]] = {"train": _to_parts(keys[train_rows], idx[train_rows], order, cfg.train_labels)}
    if len(val_rows):
        parts["val"] = _to_parts(keys[val_rows], idx[val_rows], order, True)
    if test:
        parts["test"] = [SplitPart(s.key, np.arange(len(s), dtype=np.int64), True) for s in test]
    unl = _to_parts(keys[hidden_rows], idx[hidden_rows], order, False)
    unl += [SplitPart(s.key, np.arange(len(s), dtype=np.int64), False) for s in unlabeled]
    if unl and cfg.max_unlabeled is not None:
        # One seeded permutation, truncated: a smaller subset is contained in every larger one,
        # so "accuracy vs amount of unlabeled data" compares nested sets.
        u_keys = np.concatenate([np.full(len(p.indices), p.source, dtype=object) for p in unl])
        u_idx = np.concatenate([p.indices for p in unl])
        pick = np.random.default_rng([cfg.seed, 1]).permutation(len(u_idx))[: cfg.max_unlabeled]
        unl = _to_parts(u_keys[pick], u_idx[pick], [p.source for p in unl], False)
        parts["unlabeled"] = unl  # kept even when empty, so "train+unlabeled" still names a split
    elif unl:
        parts["unlabeled"] = unl

    h = hashlib.sha256()
    for name, ps in parts.items():
        for p in ps:
            h.update(f"{name}|{p.source}|{int(p.labeled)}|".encode() + p.indices.tobytes())
    manifest = {
        "dataset": cfg.dataset,
        "root": str(root),
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "labeled_per_class": cfg.labeled_per_class,
        "train_labels": cfg.train_labels,
        "max_unlabeled": cfg.max_unlabeled,
        "classes": list(classes),
        "counts": {name: int(sum(len(p.indices) for p in ps)) for name, ps in parts.items()},
        "sources": {k: len(s) for k, s in sources.items()},
        "splits_sha256": h.hexdigest(),  # which exact images are in each split
    }
    return DataSplits(sources=sources, classes=list(classes), parts=parts, manifest=manifest)
