"""Data layer: sources read back correctly, splits are stratified/deterministic/disjoint, bad images are skipped."""

from __future__ import annotations

import gzip
import json
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import STL10_LEFT_COLS, STL10_SIZES, STL10_TOP_ROWS, stl10_pattern, write_stl10
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
    sample_aug_params,
    student_view,
)
from edgedistill.errors import DataError


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
# CIFAR-10, Fashion-MNIST, demo
# ---------------------------------------------------------------------------------------------


def test_cifar10_pickles_and_imagefolder_layouts(tmp_path: Path, image_folder: Path) -> None:
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    imgs[:, :4] = (255, 0, 0)  # top rows red: checks the [3, 32, 32] row layout
    for k in range(1, 6):
        with open(d / f"data_batch_{k}", "wb") as f:
            pickle.dump({b"data": imgs.transpose(0, 3, 1, 2).reshape(6, -1), b"labels": list(range(6))}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in ("airplane automobile bird cat deer dog frog horse ship truck".split())]}, f)
    src = CIFAR10Source(d, "train")
    assert len(src) == 30 and src.classes[1] == "automobile"
    np.testing.assert_array_equal(np.asarray(src.load(7)), imgs[1])
    splits = build_splits(DataConfig(dataset="cifar10", root=str(tmp_path), val_fraction=0.0))
    assert set(splits.parts) == {"train"}  # no test_batch: no test split
    # ImageFolder layout: root may be the parent of train/.
    (tmp_path / "if").mkdir()
    image_folder.rename(tmp_path / "if" / "train")
    splits = build_splits(DataConfig(dataset="cifar10", root=str(tmp_path / "if"), val_fraction=0.0))
    assert splits.manifest["counts"] == {"train": 18} and "cifar10/train" in splits.sources
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        build_splits(DataConfig(dataset="cifar10", root=str(tmp_path / "missing")))


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    raw = bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, dtype=">i4").tobytes() + arr.astype(np.uint8).tobytes()
    (path.with_name(path.name + ".gz").write_bytes(gzip.compress(raw)) if gz else path.write_bytes(raw))


@pytest.mark.parametrize("layout", ["flat_gz", "torchvision_raw"])
def test_fashion_mnist_idx_files(tmp_path: Path, layout: str) -> None:
    d = tmp_path if layout == "flat_gz" else tmp_path / "FashionMNIST" / "raw"
    d.mkdir(parents=True, exist_ok=True)
    gz = layout == "flat_gz"
    imgs = np.zeros((20, 28, 28), dtype=np.uint8)
    imgs[:, :3] = 200  # top rows bright
    _write_idx(d / "train-images-idx3-ubyte", imgs, gz)
    _write_idx(d / "train-labels-idx1-ubyte", np.arange(20) % 10, gz)
    _write_idx(d / "t10k-images-idx3-ubyte", imgs[:5], gz)
    _write_idx(d / "t10k-labels-idx1-ubyte", np.arange(5), gz)
    splits = build_splits(DataConfig(dataset="fashion_mnist", root=str(tmp_path)))
    assert splits.manifest["counts"] == {"train": 10, "val": 10, "test": 5}
    img = splits.sources["fashion_mnist/train"].load(0)
    assert img.mode == "RGB" and img.size == (28, 28) and np.asarray(img)[0, 10].tolist() == [200] * 3
    assert np.asarray(img)[10, 0].tolist() == [0, 0, 0]
    assert isinstance(splits.sources["fashion_mnist/test"], FashionMNISTSource)


def test_demo_dataset(demo_root: Path) -> None:
    splits = build_splits(DataConfig(dataset="demo", root=str(demo_root)))
    assert splits.manifest["counts"] == {"train": 900, "val": 100, "test": 1000, "unlabeled": 8000}
    assert len(splits.classes) == 10 and splits.classes[0] == "airplane"
    assert [p.source for p in splits.parts["test"]] == ["demo/eval"]
    assert np.bincount(splits.labels("val")).tolist() == [10] * 10
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
    crop = eval_transform(ViewSpec(8, (0.0,) * 3, (1.0,) * 3, "nearest", crop_pct=0.5))(_gradient(64))
    assert 0.25 < crop[0].min() and crop[0].max() < 0.75  # only the centre survives
    assert view.to_dict()["mean"] == [0.5, 0.5, 0.5]

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
