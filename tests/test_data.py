"""Data layer: sources read back correctly (and refuse what is not theirs), folder walks survive links and
permissions, splits are stratified/deterministic/disjoint, bad images are skipped, views match the libraries' own."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
import tarfile
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (
    CIFAR10_NAMES,
    STL10_LEFT_COLS,
    STL10_SIZES,
    STL10_TOP_ROWS,
    cifar10_image,
    stl10_pattern,
    write_cifar10_batches,
    write_stl10,
)
from edgedistill.config import DataConfig
from edgedistill.data import (
    BadImageError,
    BadImageWarning,
    CIFAR10Source,
    FashionMNISTSource,
    ImageFolderSource,
    STL10Binary,
    TrainTransform,
    UnlabeledImages,
    ViewSpec,
    apply_aug,
    build_splits,
    collate_skip_bad,
    eval_transform,
    list_images,
    preprocess,
    sample_aug_params,
    student_view,
)
from edgedistill.data import images as images_module
from edgedistill.data import sources as sources_module
from edgedistill.errors import ConfigError, DataError


def _to_float(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# STL10
# ---------------------------------------------------------------------------------------------


def test_stl10_reads_upright_through_a_memory_map(stl10_root: Path) -> None:
    src = STL10Binary(stl10_root / "stl10_binary", "train")
    assert len(src) == STL10_SIZES["train"] and src.key == "stl10/train"
    assert src.classes[0] == "airplane" and src.labels.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    img = src.load(3)
    assert img.mode == "RGB" and img.size == (96, 96)
    a = np.asarray(img)
    assert tuple(a[0, 50]) == (255, 0, 0)  # top row is red, not the left column
    assert tuple(a[50, 0]) == (0, 255, 0)  # left column is green
    assert tuple(a[STL10_TOP_ROWS, STL10_LEFT_COLS]) == (0, 0, 53)
    np.testing.assert_array_equal(a, stl10_pattern(3))
    assert isinstance(src._images, np.memmap)  # never loaded whole
    # Parts continue the pattern's running index: unlabeled image 0 is overall image 30.
    unl = STL10Binary(stl10_root / "stl10_binary", "unlabeled")
    assert (unl.labels == -1).all()
    np.testing.assert_array_equal(np.asarray(unl.load(0)), stl10_pattern(30))
    ident = src.identity()
    assert ident["n"] == 20 and set(ident["files"]) == {"train_X.bin", "train_y.bin"}
    json.dumps(ident)


def test_stl10_splits_and_unions(stl10_root: Path) -> None:
    splits = build_splits(DataConfig(dataset="stl10", root=str(stl10_root), val_fraction=0.1, seed=3))
    assert splits.manifest["counts"] == {"train": 10, "val": 10, "test": 10, "unlabeled": 7}  # 2 per class: 1 goes to val
    assert splits.manifest["seed"] == 3 and splits.classes[2] == "car"
    ds = splits.dataset("train+unlabeled", eval_transform(student_view(48)))
    assert len(ds) == 17
    first, last = ds[0], ds[len(ds) - 1]
    assert first["image"].shape == (3, 48, 48) and first["source"] == "stl10/train" and first["label"] >= 0
    assert last["source"] == "stl10/unlabeled" and last["label"] == -1 and last["index"] == 6
    assert (splits.labels("unlabeled") == -1).all()
    with pytest.raises(DataError, match="'tran'.*Valid: train, val, test, unlabeled"):
        splits.dataset("tran+unlabeled", None)


def test_stl10_missing_files_raise_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    calls = []

    class FakeSTL10:  # stands in for the network: writes the files torchvision would
        def __init__(self, root: str, split: str, download: bool) -> None:
            calls.append((root, split, download))
            write_stl10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "STL10", FakeSTL10)
    with pytest.raises(DataError, match=r"stl10_binary.*--data.download true.*--data.root"):
        build_splits(DataConfig(dataset="stl10", root=str(tmp_path / "nothing")))
    assert calls == []  # never downloads unless asked
    splits = build_splits(DataConfig(dataset="stl10", root=str(tmp_path / "dl"), download=True))
    assert calls == [(str(tmp_path / "dl"), "train", True)] and splits.manifest["counts"]["test"] == 10


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


def _rows(splits, name: str) -> set[tuple[str, int]]:
    return {(p.source, int(i)) for p in splits.parts.get(name, []) for i in p.indices}


def test_val_split_is_stratified_deterministic_and_disjoint(tmp_path: Path) -> None:
    root = write_stl10(tmp_path, {"train": 200, "test": 10})  # 20 per class
    cfg = DataConfig(dataset="stl10", root=str(root), val_fraction=0.25, seed=0)
    a, b = build_splits(cfg), build_splits(cfg)
    c = build_splits(DataConfig(dataset="stl10", root=str(root), val_fraction=0.25, seed=1))
    assert "unlabeled" not in a.parts  # no unlabeled_X.bin: the split is absent, not empty
    assert np.bincount(a.labels("val"), minlength=10).tolist() == [5] * 10
    assert np.bincount(a.labels("train"), minlength=10).tolist() == [15] * 10
    train, val = _rows(a, "train"), _rows(a, "val")
    assert not train & val and len(train | val) == 200
    assert val == _rows(b, "val") and a.manifest["splits_sha256"] == b.manifest["splits_sha256"]
    assert val != _rows(c, "val") and a.manifest["splits_sha256"] != c.manifest["splits_sha256"]
    assert not val & _rows(a, "test")  # test is its own source, never carved


def test_labeled_per_class_moves_the_rest_to_unlabeled_with_labels_hidden(tmp_path: Path) -> None:
    root = write_stl10(tmp_path, {"train": 100, "test": 10, "unlabeled": 5})
    splits = build_splits(DataConfig(dataset="stl10", root=str(root), labeled_per_class=4, val_fraction=0.25, seed=0))
    assert np.bincount(splits.labels("train+val"), minlength=10).tolist() == [4] * 10
    assert np.bincount(splits.labels("val"), minlength=10).tolist() == [1] * 10
    assert splits.manifest["counts"]["unlabeled"] == 60 + 5 and splits.manifest["labeled_per_class"] == 4
    hidden = [p for p in splits.parts["unlabeled"] if p.source == "stl10/train"]
    assert len(hidden) == 1 and not hidden[0].labeled
    assert (splits.labels("unlabeled") == -1).all()
    assert not _rows(splits, "unlabeled") & (_rows(splits, "train") | _rows(splits, "val"))
    item = splits.dataset("unlabeled", None)[0]
    assert item["source"] == "stl10/train" and item["label"] == -1 and isinstance(item["image"], Image.Image)


def test_max_unlabeled_takes_nested_seeded_subsets(tmp_path: Path) -> None:
    root = write_stl10(tmp_path, {"train": 40, "test": 10, "unlabeled": 30})
    base = dict(dataset="stl10", root=str(root), labeled_per_class=2, seed=0)
    full = _rows(build_splits(DataConfig(**base)), "unlabeled")
    assert len(full) == 20 + 30
    sizes = {}
    for m in (0, 7, 25, 1000):
        splits = build_splits(DataConfig(**base, max_unlabeled=m))
        sizes[m] = _rows(splits, "unlabeled")
        assert splits.manifest["counts"]["unlabeled"] == min(m, 50) and splits.manifest["max_unlabeled"] == m
    assert sizes[0] == set() and sizes[7] < sizes[25] < sizes[1000] == full
    assert {s for s, _ in sizes[25]} == {"stl10/train", "stl10/unlabeled"}  # drawn from both parts
    empty = build_splits(DataConfig(**base, max_unlabeled=0))
    assert len(empty.dataset("train+unlabeled", None)) == len(empty.labels("train")) == 10  # 2 per class, 1 to val
    assert sizes[7] == _rows(build_splits(DataConfig(**base, max_unlabeled=7)), "unlabeled")


def test_imagefolder_and_extra_unlabeled_tar(image_folder: Path, tmp_path: Path) -> None:
    tar_path = tmp_path / "extra.tar"
    with tarfile.open(tar_path, "w") as tf:
        for k, f in enumerate(sorted(image_folder.rglob("*.png"))):
            tf.add(f, arcname=f"imgs/{k}.png")
    splits = build_splits(DataConfig(dataset="imagefolder", root=str(image_folder), unlabeled=[str(tar_path)]))
    assert splits.classes == ["cat", "dog", "ship"]
    assert splits.manifest["counts"] == {"train": 15, "val": 3, "unlabeled": 9}
    src = splits.sources["extra/extra"]
    assert isinstance(src, UnlabeledImages) and src.is_tar and len(src) == 9
    # Forked DataLoader workers each reopen the tar and read the right bytes.
    loader = torch.utils.data.DataLoader(splits.dataset("unlabeled", eval_transform(student_view(16))),
                                         batch_size=4, num_workers=2, collate_fn=collate_skip_bad)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 9 and all(b["n_bad"] == 0 for b in batches)
    np.testing.assert_array_equal(np.asarray(src.load(0)), np.asarray(Image.open(sorted(image_folder.rglob("*.png"))[0]).convert("RGB")))
    with pytest.raises(DataError, match="not a folder or a .tar"):
        build_splits(DataConfig(dataset="imagefolder", root=str(image_folder), unlabeled=[str(tmp_path / "nope")]))


def test_imagefolder_with_train_and_test_subfolders(image_folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "ds"
    (root / "train").mkdir(parents=True)
    for c in ("cat", "dog", "ship"):
        (image_folder / c).rename(root / "train" / c)
    (root / "test" / "dog").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "test" / "dog" / "a.png")
    splits = build_splits(DataConfig(dataset="imagefolder", root=str(root), val_fraction=0.0))
    assert set(splits.parts) == {"train", "test"} and splits.labels("test").tolist() == [1]  # mapped by train's classes
    assert set(splits.sources) == {"ds/train", "ds/test"}
    (root / "test" / "horse").mkdir()
    Image.new("RGB", (8, 8)).save(root / "test" / "horse" / "a.png")
    with pytest.raises(DataError, match="horse"):
        build_splits(DataConfig(dataset="imagefolder", root=str(root)))


# ---------------------------------------------------------------------------------------------
# Bad images
# ---------------------------------------------------------------------------------------------


def test_corrupt_images_are_skipped_counted_and_named(image_folder: Path) -> None:
    good = image_folder / "dog" / "00.jpg"
    data = good.read_bytes()
    (image_folder / "dog" / "98_truncated.jpg").write_bytes(data[: len(data) // 2])
    (image_folder / "ship" / "99_garbage.png").write_bytes(b"not an image at all")
    src = ImageFolderSource(image_folder, "folder/train")
    bad_idx = [i for i, f in enumerate(src.files) if f.name.startswith("9")]
    with pytest.raises(BadImageError, match="98_truncated"):
        src.load(bad_idx[0])

    splits = build_splits(DataConfig(dataset="imagefolder", root=str(image_folder), val_fraction=0.0))
    ds = splits.dataset("train", eval_transform(student_view(16)))
    with pytest.warns(BadImageWarning, match="99_garbage"):
        assert ds[bad_idx[1]] is None
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate_skip_bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        batches = [b for b in loader if b is not None]
    assert sum(b["n_bad"] for b in batches) == 2
    assert sorted(x for b in batches for x in b["bad"]) == [("folder/train", i) for i in bad_idx]
    assert sum(len(b["index"]) for b in batches) == 18
    b = batches[0]
    assert b["image"].shape[1:] == (3, 16, 16) and b["label"].dtype == torch.int64 and isinstance(b["source"], list)
    assert collate_skip_bad([None, None]) is None


# ---------------------------------------------------------------------------------------------
# Folder walks: symbolic links, permissions, empty classes
# ---------------------------------------------------------------------------------------------


def _label_of(src: ImageFolderSource, i: int) -> str:
    return src.classes[src.labels[i]]


def test_symlink_loops_list_each_file_once_with_its_own_label(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "cat" / "up").symlink_to("..")  # back to the dataset root: would relabel dog/ship as cat
    (image_folder / "dog" / "cats").symlink_to("../cat")  # into another class
    (image_folder / "ship" / "self").symlink_to(".")  # into itself
    extra = tmp_path / "more-ships"  # a link out of the tree is followed: its images are ships
    extra.mkdir()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(extra / "far.png")
    (image_folder / "ship" / "more").symlink_to(extra)
    with pytest.warns(UserWarning, match=r"3 folder\(s\) reached again through a symbolic link loop"):
        src = ImageFolderSource(image_folder, "folder/train")
    assert len(src) == 19 and len({f.resolve() for f in src.files}) == 19  # each file once
    for i, f in enumerate(src.files):
        assert _label_of(src, i) == f.relative_to(image_folder).parts[0], f
    assert src.files[-1] == image_folder / "ship" / "more" / "far.png"
    assert np.bincount(src.labels).tolist() == [6, 6, 7]
    # The bare walk (unlabeled folders) of the whole tree: each real folder once, the loops reported.
    listing = list_images(image_folder)
    assert len(listing.files) == 19 and len({f.resolve() for f in listing.files}) == 19
    assert sorted(p.name for p in listing.loops) == ["cats", "self", "up"]
    with pytest.warns(UserWarning, match="symbolic link loop"):
        assert len(UnlabeledImages(image_folder, "u")) == 19


def test_broken_file_links_are_skipped_and_counted(image_folder: Path) -> None:
    (image_folder / "cat" / "gone.jpg").symlink_to(image_folder / "nowhere.jpg")
    (image_folder / "dog" / "dead-folder").symlink_to(image_folder / "no-such-folder")  # not an image name: ignored
    listing = list_images(image_folder)
    assert listing.broken_links == [image_folder / "cat" / "gone.jpg"] and len(listing.files) == 18
    with pytest.warns(UserWarning, match=r"skipped 1 broken symbolic link\(s\) \(e.g. .*gone.jpg\)"):
        src = ImageFolderSource(image_folder, "folder/train")
    assert len(src) == 18 and all(f.name != "gone.jpg" for f in src.files)
    with pytest.warns(UserWarning, match="broken symbolic link"):
        splits = build_splits(DataConfig(dataset="imagefolder", root=str(image_folder), val_fraction=0.0))
    assert splits.manifest["counts"] == {"train": 18}


_UNREADABLE_CHILD = """
import sys
from pathlib import Path
import pytest
from edgedistill.config import DataConfig
from edgedistill.data import ImageFolderSource, UnlabeledImages, build_splits, list_images
from edgedistill.errors import DataError
root = Path(sys.argv[1])
locked = root / "dog"
assert list_images(root).unreadable == [locked]
with pytest.raises(DataError, match=r"Class folder .*/dog .*cannot be read \\(permissions\\?\\)"):
    ImageFolderSource(root, "folder/train")
with pytest.raises(DataError, match="/dog"):
    build_splits(DataConfig(dataset="imagefolder", root=str(root)))
with pytest.raises(DataError, match="cannot read folder .*/dog"):
    UnlabeledImages(root, "u")
print("checked")
"""


def test_unreadable_class_folder_raises_naming_it(image_folder: Path) -> None:
    """chmod 000 on a class folder, as a user meets it: checked in a child that obeys file modes even as root (CI)."""
    from conftest import CLI_CHILD, run_unprivileged

    locked = image_folder / "dog"
    locked.chmod(0)
    try:
        p = run_unprivileged(_UNREADABLE_CHILD, str(image_folder))
        assert p.returncode == 0 and p.stdout.strip() == "checked", p.stderr[-3000:]
        p = run_unprivileged(CLI_CHILD, "cache", "--data.dataset", "imagefolder", "--data.root", str(image_folder),
                             "--split", "train")
        err = [line for line in p.stderr.strip().splitlines() if "warning" not in line.lower()]
        assert p.returncode == 2 and len(err) == 1 and "/dog" in err[0] and "Traceback" not in p.stderr, p.stderr[-3000:]
    finally:
        locked.chmod(0o755)


def test_unreadable_folders_simulated(image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same as chmod 000, where chmod cannot take read access away (root): listing the folder fails.
    (image_folder / "ship" / "nested").mkdir()
    locked = {image_folder / "dog", image_folder / "ship" / "nested"}
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) in locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(images_module.os, "scandir", scandir)
    assert sorted(list_images(image_folder).unreadable) == sorted(locked)
    with pytest.raises(DataError, match=r"Class folder .*/dog .*cannot be read"):
        ImageFolderSource(image_folder, "folder/train")
    locked.discard(image_folder / "dog")
    with pytest.raises(DataError, match=r"Class folder .*/ship \(or a folder inside it: .*/ship/nested\)"):
        ImageFolderSource(image_folder, "folder/train")
    with pytest.raises(DataError, match="cannot read folder .*/ship/nested"):
        UnlabeledImages(image_folder, "u")


def test_empty_class_folder_warns(image_folder: Path) -> None:
    (image_folder / "horse" / "notes").mkdir(parents=True)
    (image_folder / "horse" / "notes" / "readme.txt").write_text("no images here")
    with pytest.warns(UserWarning, match=r"class folder\(s\) \['horse'\] hold no images"):
        src = ImageFolderSource(image_folder, "folder/train")
    assert src.classes == ["cat", "dog", "horse", "ship"] and len(src) == 18
    assert 2 not in src.labels.tolist()
    (image_folder / "horse" / "notes" / "readme.txt").unlink()
    for c in ("cat", "dog", "ship"):
        for f in (image_folder / c).iterdir():
            f.unlink()
    with pytest.raises(DataError, match="holds no images"):
        ImageFolderSource(image_folder, "folder/train")


# ---------------------------------------------------------------------------------------------
# CIFAR-10, Fashion-MNIST, demo
# ---------------------------------------------------------------------------------------------


def test_cifar10_official_pickles_read_upright(tmp_path: Path, cifar10_official_md5) -> None:
    d = write_cifar10_batches(tmp_path) / "cifar-10-batches-py"
    cifar10_official_md5(d)
    src = CIFAR10Source(d, "train")
    assert len(src) == 30 and src.key == "cifar10/train" and src.classes == CIFAR10_NAMES
    assert src.labels.dtype == np.int64 and src.labels.tolist() == [i % 10 for i in range(30)]
    for i in (0, 7, 29):  # batches concatenate in order: image i of train is written image i
        img = src.load(i)
        assert img.mode == "RGB" and img.size == (32, 32)
        np.testing.assert_array_equal(np.asarray(img), cifar10_image(i))
    a = np.asarray(src.load(7))
    assert tuple(a[0, 5]) == (255, 100, 200)  # top row marked in the red channel: upright, not transposed
    assert tuple(a[5, 0]) == (7, 100, 200)  # channels in RGB order, not swapped
    test = CIFAR10Source(d, "test")
    assert len(test) == 5 and test.labels.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(np.asarray(test.load(0)), cifar10_image(30))
    ident = src.identity()
    assert ident["n"] == 30 and set(ident["files"]) == {f"data_batch_{k}" for k in range(1, 6)}
    json.dumps(ident)

    splits = build_splits(DataConfig(dataset="cifar10", root=str(tmp_path), val_fraction=0.0))
    assert splits.manifest["counts"] == {"train": 30, "test": 5} and splits.classes == CIFAR10_NAMES
    item = splits.dataset("test", None)[3]
    assert item["label"] == 3 and item["source"] == "cifar10/test"
    np.testing.assert_array_equal(np.asarray(item["image"]), cifar10_image(33))


class _WritesMarker:
    """Unpickling this opens (creates) ``path``: what a malicious pickle could do instead."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _planted_batch(marker: Path) -> bytes:
    return pickle.dumps({"data": _WritesMarker(marker), "labels": [0], "batch_label": "x"}, protocol=2)


@pytest.mark.parametrize("planted", ["data_batch_1", "test_batch", "batches.meta"])
def test_cifar10_refuses_files_that_are_not_official_without_unpickling(
    tmp_path: Path, cifar10_official_md5, planted: str
) -> None:
    d = write_cifar10_batches(tmp_path) / "cifar-10-batches-py"
    cifar10_official_md5(d)  # the official md5 table: the files as written
    # The payload does what it says when unpickled by anyone who does not check first.
    probe = tmp_path / "probe-marker"
    pickle.loads(_planted_batch(probe))["data"].close()
    assert probe.exists()
    marker = tmp_path / "PLANTED-PICKLE-RAN"
    (d / planted).write_bytes(_planted_batch(marker))  # same name, md5 not the release's
    for part in ("train", "test"):
        with pytest.raises(DataError, match="official CIFAR-10"):
            CIFAR10Source(d, part)
    with pytest.raises(DataError, match="official CIFAR-10"):
        build_splits(DataConfig(dataset="cifar10", root=str(tmp_path)))
    assert not marker.exists()


def test_cifar10_imagefolder_layouts_and_missing(tmp_path: Path, image_folder: Path) -> None:
    # ImageFolder layout: root may be the parent of train/.
    (tmp_path / "if").mkdir()
    image_folder.rename(tmp_path / "if" / "train")
    splits = build_splits(DataConfig(dataset="cifar10", root=str(tmp_path / "if"), val_fraction=0.0))
    assert splits.manifest["counts"] == {"train": 18} and "cifar10/train" in splits.sources
    assert isinstance(splits.sources["cifar10/train"], ImageFolderSource)
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        build_splits(DataConfig(dataset="cifar10", root=str(tmp_path / "missing")))


def _idx_bytes(arr: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: np.uint8, 0x0D: ">f4"}[type_code]
    return bytes([0, 0, type_code, arr.ndim]) + np.asarray(arr.shape, dtype=">i4").tobytes() + arr.astype(dtype).tobytes()


def _write_idx(path: Path, arr: np.ndarray, gz: bool, type_code: int = 0x08) -> None:
    raw = _idx_bytes(arr, type_code)
    (path.with_name(path.name + ".gz").write_bytes(gzip.compress(raw)) if gz else path.write_bytes(raw))


def _fashion_images(n: int, offset: int = 0) -> np.ndarray:
    imgs = np.zeros((n, 28, 28), dtype=np.uint8)
    imgs[:, :3] = 200  # top rows bright: orientation
    imgs[:, 10:, :] = (np.arange(n) + offset)[:, None, None] % 150  # index-dependent: order
    return imgs


def _write_fashion(d: Path, gz: bool, offset: int = 0, n_train: int = 20) -> None:
    d.mkdir(parents=True, exist_ok=True)
    _write_idx(d / "train-images-idx3-ubyte", _fashion_images(n_train, offset), gz)
    _write_idx(d / "train-labels-idx1-ubyte", np.arange(n_train) % 10, gz)
    _write_idx(d / "t10k-images-idx3-ubyte", _fashion_images(5, 100 + offset), gz)
    _write_idx(d / "t10k-labels-idx1-ubyte", np.arange(5), gz)


@pytest.mark.parametrize("layout", ["flat_gz", "flat_plain", "torchvision_raw", "raw_gz"])
def test_fashion_mnist_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    data_dir = tmp_path / "data-dir"
    monkeypatch.setattr(sources_module, "DATA_DIR", data_dir)  # decompressed copies go here, not to ~/.cache
    root = tmp_path / "fmnist"
    d = {"flat_gz": root, "flat_plain": root, "torchvision_raw": root / "FashionMNIST" / "raw", "raw_gz": root / "raw"}[layout]
    _write_fashion(d, gz=layout.endswith("gz"))
    splits = build_splits(DataConfig(dataset="fashion_mnist", root=str(root)))
    assert splits.manifest["counts"] == {"train": 10, "val": 10, "test": 5}
    train, test = splits.sources["fashion_mnist/train"], splits.sources["fashion_mnist/test"]
    assert isinstance(test, FashionMNISTSource) and train.labels.tolist() == [i % 10 for i in range(20)]
    assert len(train.classes) == 10 and train.classes[0] == "T-shirt/top"
    img = train.load(7)
    assert img.mode == "RGB" and img.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(img), np.repeat(_fashion_images(20)[7][..., None], 3, -1))
    np.testing.assert_array_equal(np.asarray(test.load(2))[..., 0], _fashion_images(5, 100)[2])
    assert np.asarray(img)[0, 10].tolist() == [200] * 3 and np.asarray(img)[5, 0].tolist() == [0, 0, 0]
    json.dumps(train.identity())

    copies = sorted(data_dir.rglob("*-ubyte"))
    if layout == "torchvision_raw":
        assert copies == []  # torchvision's own layout of plain files is read in place
        return
    assert [p.name for p in copies] == sorted(sources_module.FASHION_MNIST_FILES)  # decompressed (or copied) once
    stamp = [p.stat().st_mtime_ns for p in copies]
    build_splits(DataConfig(dataset="fashion_mnist", root=str(root)))
    assert [p.stat().st_mtime_ns for p in sorted(data_dir.rglob("*-ubyte"))] == stamp  # not rewritten
    # New files in the same folder are read, not the stale decompressed copy.
    for f in d.iterdir():
        f.unlink()
    _write_fashion(d, gz=layout.endswith("gz"), offset=1, n_train=30)
    again = FashionMNISTSource(d, "train")
    assert len(again) == 30
    np.testing.assert_array_equal(np.asarray(again.load(7))[..., 0], _fashion_images(30, 1)[7])


def test_fashion_mnist_bad_files_raise_data_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources_module, "DATA_DIR", tmp_path / "data-dir")
    with pytest.raises(DataError, match="Fashion-MNIST not found.*--data.download true"):
        build_splits(DataConfig(dataset="fashion_mnist", root=str(tmp_path / "nothing")))
    floats = tmp_path / "floats"
    _write_fashion(floats, gz=False)
    _write_idx(floats / "train-images-idx3-ubyte", _fashion_images(20), gz=False, type_code=0x0D)  # float32 pixels
    with pytest.raises(DataError, match="not valid idx-ubyte"):
        FashionMNISTSource(floats, "train")
    truncated = tmp_path / "truncated"
    _write_fashion(truncated, gz=True)
    data = (truncated / "train-images-idx3-ubyte.gz").read_bytes()
    (truncated / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not a readable gzip"):
        FashionMNISTSource(truncated, "train")


@pytest.mark.slow  # extracting the 10,000-image demo archive takes 7-20 s on 2 cores
def test_demo_dataset(demo_root: Path) -> None:
    splits = build_splits(DataConfig(dataset="demo", root=str(demo_root)))
    assert splits.manifest["counts"] == {"train": 4500, "val": 500, "test": 5000, "unlabeled": 40000}
    assert len(splits.classes) == 10 and splits.classes[0] == "airplane"
    assert [p.source for p in splits.parts["test"]] == ["demo/eval"]
    assert np.bincount(splits.labels("val")).tolist() == [50] * 10
    img = splits.sources["demo/unlabeled"].load(0)
    assert img.size == (32, 32) and img.mode == "RGB"
    json.dumps({k: s.identity() for k, s in splits.sources.items()})
    with pytest.raises(DataError, match="holds no demo tree"):
        build_splits(DataConfig(dataset="demo", root=str(demo_root / "labeled")))


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------


def _gradient(size: int) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    return Image.fromarray((np.stack([x, y, 1 - x], -1) * 255).astype(np.uint8))


def test_aug_params_are_deterministic_keyed_and_in_bounds() -> None:
    p = sample_aug_params(0, "stl10/train", 5, 2)
    assert p == sample_aug_params(0, "stl10/train", 5, 2)
    others = {sample_aug_params(0, "stl10/train", 5, v) for v in range(8)} | {sample_aug_params(1, "stl10/train", 5, 2)}
    assert len(others) == 9
    for v in range(50):
        q = sample_aug_params(0, "x", v, 0)
        assert 0 <= q.top and q.top + q.height <= 1 + 1e-9 and 0 <= q.left and q.left + q.width <= 1 + 1e-9
        assert 0.35 - 1e-9 <= q.height * q.width <= 1 + 1e-9
    assert 10 < sum(sample_aug_params(0, "x", v, 0).flip for v in range(50)) < 40


def test_apply_aug_replays_the_same_crop_at_any_resolution() -> None:
    view_s = ViewSpec(32, (0.0,) * 3, (1.0,) * 3, "bilinear")
    view_t = ViewSpec(64, (0.0,) * 3, (1.0,) * 3, "bilinear")
    p = sample_aug_params(0, "demo/unlabeled", 3, 1)
    small = apply_aug(_gradient(96), p, view_s)  # [3, 32, 32]
    big = apply_aug(_gradient(300), p, view_t)  # [3, 64, 64]: other source and output sizes
    assert small.shape == (3, 32, 32) and big.shape == (3, 64, 64)
    down = torch.nn.functional.avg_pool2d(big[None], 2)[0]
    assert (down - small).abs().max() < 0.03  # the same region, flip included
    other = apply_aug(_gradient(96), sample_aug_params(0, "demo/unlabeled", 4, 1), view_s)
    assert (other - small).abs().max() > 0.1


def test_eval_transform_and_train_transform() -> None:
    view = ViewSpec(24, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    x = eval_transform(view)(Image.new("RGB", (40, 30), (255, 0, 0)))
    assert x.shape == (3, 24, 24) and torch.allclose(x[:, 5, 5], torch.tensor([1.0, -1.0, -1.0]))
    crop = eval_transform(ViewSpec(8, (0.0,) * 3, (1.0,) * 3, "nearest", "shortest", crop_pct=0.5))(_gradient(64))
    assert 0.25 < crop[0].min() and crop[0].max() < 0.75  # only the centre survives
    assert view.to_dict()["mean"] == [0.5, 0.5, 0.5] and ViewSpec(**view.to_dict()) == view
    with pytest.raises(ConfigError, match="crop_pct=0.5 .*only with resize_mode='shortest'"):
        ViewSpec(8, (0.0,) * 3, (1.0,) * 3, "nearest", "squash", crop_pct=0.5)
    with pytest.raises(ConfigError, match="Unknown resize_mode 'crop'"):
        ViewSpec(8, (0.0,) * 3, (1.0,) * 3, resize_mode="crop")

    img, teacher = _gradient(96), ViewSpec(48, (0.0,) * 3, (1.0,) * 3)
    student = ViewSpec(16, (0.0,) * 3, (1.0,) * 3)
    cached = TrainTransform(student, aug=True, seed=7, teacher_view=teacher, num_views=3)
    views = set()
    for _ in range(12):
        out = cached(img, "stl10/unlabeled", 4)
        views.add(out["view"])
        p = sample_aug_params(7, "stl10/unlabeled", 4, out["view"])
        assert torch.equal(out["image"], apply_aug(img, p, student))  # exactly a crop the cache holds
        assert torch.equal(out["teacher_image"], apply_aug(img, p, teacher))
    assert views == {0, 1, 2}
    online = TrainTransform(student, aug=True, seed=0, teacher_view=teacher)
    o1, o2 = online(img, "s", 0), online(img, "s", 0)
    assert o1["view"] == -1 and not torch.equal(o1["image"], o2["image"])
    plain = TrainTransform(student, aug=False)(img, "s", 0)
    assert torch.equal(plain["image"], eval_transform(student)(img)) and "teacher_image" not in plain


# ---------------------------------------------------------------------------------------------
# Views: the one eval transform equals the libraries' own
# ---------------------------------------------------------------------------------------------


def _noise(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocess_equals_open_clip_eval_transform(mode: str, interpolation: str) -> None:
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from edgedistill.teachers.openclip import view_from_preprocess_cfg

    cfg = PreprocessCfg(size=24, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28), interpolation=interpolation,
                        resize_mode=mode, fill_color=77)
    view = view_from_preprocess_cfg(asdict(cfg))
    assert (view.resize_mode, view.interpolation, view.fill, view.crop_pct) == (mode, interpolation, 77, 1.0)
    reference = image_transform_v2(cfg, is_train=False)
    for k, (w, h) in enumerate([(53, 31), (29, 67), (50, 33), (13, 10), (24, 24)]):  # wide, tall, odd pads, upscaled
        img = _noise(w, h, k)
        ours = preprocess(img, view)
        assert ours.dtype == np.float32 and ours.shape == (3, 24, 24)
        np.testing.assert_allclose(ours, reference(img).numpy(), atol=1e-6, rtol=0, err_msg=f"{mode} {w}x{h}")


def test_resize_modes_differ_on_non_square_images() -> None:
    # The three modes are three different pictures (the old mapping made 'longest' behave as 'shortest').
    from edgedistill.teachers.openclip import view_from_preprocess_cfg

    base = {"size": 20, "mean": (0.0,) * 3, "std": (1.0,) * 3, "interpolation": "bicubic", "fill_color": 51}
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    out = {m: preprocess(img, view_from_preprocess_cfg({**base, "resize_mode": m})) for m in ("shortest", "longest", "squash")}
    np.testing.assert_allclose(out["shortest"], 1.0, atol=1e-6)  # center crop of a white image: all white
    np.testing.assert_allclose(out["squash"], 1.0, atol=1e-6)
    longest = out["longest"]  # 40x20 -> 20x10, padded to 20x20 with the fill colour above and below
    np.testing.assert_allclose(longest[:, :5], 0.2, atol=1e-6)
    np.testing.assert_allclose(longest[:, 15:], 0.2, atol=1e-6)
    np.testing.assert_allclose(longest[:, 5:15], 1.0, atol=1e-6)
    assert view_from_preprocess_cfg({k: v for k, v in base.items() if k != "fill_color"}).resize_mode == "shortest"


def test_views_and_images_are_torch_free() -> None:
    code = ("import sys\n"
            "from edgedistill.data import ViewSpec, preprocess, list_images, decode_image\n"
            "import edgedistill.data.views, edgedistill.data.images\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm', 'open_clip')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_batch_augment_pad_crop_is_a_zero_padded_shift_and_flip():
    from edgedistill.data.transforms import BatchAugment
    from edgedistill.data.views import student_view

    augment, S, p = BatchAugment(student_view(8), pad=2), 8, 2
    pixels = torch.randint(1, 256, (32, S, S, 3), dtype=torch.uint8)  # no zeros: padding shows as 0
    out = augment(pixels, aug=True, generator=torch.Generator().manual_seed(0))
    got = (out * augment.std + augment.mean).mul(255).round().to(torch.uint8)  # back to [B, 3, S, S] pixels
    padded = torch.nn.functional.pad(pixels.permute(0, 3, 1, 2), (p, p, p, p))
    moves = set()
    for i in range(len(pixels)):
        windows = {(r, c, f): padded[i, :, r:r + S, c:c + S].flip(-1) if f else padded[i, :, r:r + S, c:c + S]
                   for r in range(2 * p + 1) for c in range(2 * p + 1) for f in (0, 1)}
        found = [k for k, w in windows.items() if torch.equal(w, got[i])]
        assert found, f"image {i} is not a shifted (and maybe mirrored) window of its zero-padded self"
        moves.add(found[0])
    assert len({m[:2] for m in moves}) > 5 and {m[2] for m in moves} == {0, 1}  # varied shifts, both flips
    plain = augment(pixels, aug=False)  # evaluation: normalisation only
    assert torch.equal((plain * augment.std + augment.mean).mul(255).round().to(torch.uint8), pixels.permute(0, 3, 1, 2))
