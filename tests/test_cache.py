"""Teacher-output cache: correctness, corrupt images, refusal, augmented views, resume after SIGKILL, 2 processes.

Everything goes through the real data sources and a real (tiny, random-init) open_clip model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, TINY_CLIP, tiny_teacher_cfg
from edgedistill.cache import ShardedArray, TeacherCache, cache_source, ensure_cache, rank_world, view_name
from edgedistill.config import DataConfig
from edgedistill.data import ImageFolderSource, apply_aug, eval_transform, sample_aug_params
from edgedistill.data.splits import BadImageWarning
from edgedistill.errors import CacheMismatchError, EdgeDistillError

TEACHER_CFG = tiny_teacher_cfg()
N_IMAGES, SHARD = 240, 40  # 6 shards

# Run by the subprocess tests. Top-level registration: torch.multiprocessing spawn re-imports this
# script in each worker, so the tiny config exists there too. With a sleep argument, every shard
# written is followed by a pause, so a test can kill the job between two shards.
SCRIPT = textwrap.dedent(f"""
    import sys
    import time
    from edgedistill.teachers.openclip import register_model_config
    register_model_config({TINY!r}, {TINY_CLIP!r})
    from edgedistill import cache
    from edgedistill.cache import store
    from edgedistill.config import DataConfig, TeacherConfig

    # At the top level, so that the processes torch.multiprocessing spawns (which re-import this script
    # with the same argv) write their shards slowly too.
    write = store.write_shard

    def slow(*args, **kwargs):
        write(*args, **kwargs)
        time.sleep(float(sys.argv[4]))

    store.write_shard = slow

    if __name__ == "__main__":
        root, cache_dir, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
        cache.ensure_cache(DataConfig(dataset="imagefolder", root=root, val_fraction=0.0),
                           TeacherConfig(kind="openclip", model={TINY!r}, pretrained="random", device="cpu", batch_size=16),
                           "train", cache_dir, devices=devices, shard_size={SHARD}, num_workers=0)
""")


def _write_images(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / ("cat" if i % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        size = (12 + i % 5, 10 + i % 3)  # varied sizes: the teacher view resizes them all
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def teacher():
    from edgedistill.teachers import create_teacher

    return create_teacher(TEACHER_CFG)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imgs")
    _write_images(root, N_IMAGES)
    return root


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory, teacher) -> TeacherCache:
    """An uninterrupted single-process run, the arrays the other runs must reproduce exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same thread count as the subprocesses: bit-identical float math
    try:
        caches = ensure_cache(DataConfig(dataset="imagefolder", root=str(images), val_fraction=0.0), TEACHER_CFG,
                              "train", tmp_path_factory.mktemp("ref"), shard_size=SHARD, num_workers=0, teacher=teacher)
    finally:
        torch.set_num_threads(threads)
    (cache,) = caches.values()
    return cache


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", EDGEDISTILL_NO_PROGRESS="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _assert_same(a: TeacherCache, b: TeacherCache) -> None:
    assert a.manifest["N"] == b.manifest["N"] and len(a.manifest["shards"]) == len(b.manifest["shards"])
    np.testing.assert_array_equal(np.asarray(a.embedding), np.asarray(b.embedding))
    np.testing.assert_array_equal(a.valid, b.valid)


def test_cache_matches_teacher_and_reopens(reference, teacher, images):
    m = reference.manifest
    assert (m["N"], m["D"], m["C"], m["bad"]) == (N_IMAGES, 32, 0, 0)
    assert len(m["shards"]) == N_IMAGES // SHARD and m["images_per_s"] > 0
    assert reference.embedding.shape == (N_IMAGES, 32) and reference.embedding.dtype == np.float16
    assert reference.logits is None and reference.aug_params is None and reference.valid.all()
    assert m["teacher"]["fingerprint"] == teacher.fingerprint
    # rows are the teacher's output on the eval view of the same image (source order)
    src = ImageFolderSource(images, "x")
    idx = [0, 39, 40, 239]
    x = torch.stack([eval_transform(teacher.view)(src.load(i)) for i in idx])
    want = teacher(x)["embedding"].numpy()
    np.testing.assert_allclose(reference.embedding[idx].astype(np.float32), want, rtol=2e-3, atol=2e-3)
    # a second request computes nothing and opens the same files
    again = cache_source(teacher, _source_of(reference, images), _root(reference), shard_size=SHARD,
                         num_workers=0)
    assert again.manifest["created"] == m["created"]


def _root(cache: TeacherCache) -> Path:
    """The cache root of a cache folder ``<root>/<fingerprint>/<source key>/<source id>/<view>``."""
    return cache.path.parents[len(Path(cache.manifest["source"]["key"]).parts) + 2]


def _source_of(cache: TeacherCache, images: Path):
    from edgedistill.data import build_splits

    return build_splits(DataConfig(dataset="imagefolder", root=str(images), val_fraction=0.0)).sources[
        cache.manifest["source"]["key"]]


def test_sharded_array_indexing():
    parts = [np.arange(6).reshape(3, 2), np.arange(6, 10).reshape(2, 2)]
    a = ShardedArray(parts)
    full = np.concatenate(parts)
    assert a.shape == (5, 2) and len(a) == 5
    for idx in (3, -1, slice(1, 4), [4, 0, 3], np.array([True, False, True, False, True]), torch.tensor([2, 3])):
        np.testing.assert_array_equal(a[idx], full[idx if not isinstance(idx, torch.Tensor) else idx.numpy()])
    np.testing.assert_array_equal(np.asarray(a), full)
    with pytest.raises(IndexError):
        a[[5]]


def test_cache_of_another_teacher_images_or_preprocessing_is_refused(tmp_path):
    """Real caches that differ in the teacher, the images or the preprocessing: each is refused for the others,
    the error naming both fingerprints (or both image sets)."""
    from edgedistill.data import build_splits
    from edgedistill.teachers.openclip import register_model_config

    register_model_config("edgedistill-tiny-2", {**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "layers": 2}})
    _write_images(tmp_path / "a", 6)
    _write_images(tmp_path / "b", 6, seed=1)  # the same names and sizes, other pixels
    cache_dir = tmp_path / "cache"

    def build(root, **teacher):
        data = DataConfig(dataset="imagefolder", root=str(tmp_path / root), val_fraction=0.0)
        (cache,) = ensure_cache(data, tiny_teacher_cfg(**teacher), "train", cache_dir, shard_size=4,
                                num_workers=0).values()
        return cache, build_splits(data).sources[cache.manifest["source"]["key"]].identity()

    (base, base_id), (other_teacher, _), (other_view, _), (other_images, images_id) = (
        build("a"), build("a", model="edgedistill-tiny-2"), build("a", image_size=48), build("b"))
    fp = {name: c.manifest["teacher"]["fingerprint"]
          for name, c in (("base", base), ("teacher", other_teacher), ("view", other_view), ("images", other_images))}
    assert len({fp["base"], fp["teacher"], fp["view"]}) == 3 and fp["images"] == fp["base"]
    for name in ("teacher", "view"):  # base's cache asked for by the other teacher, and the other way round
        for cache, want in ((base, fp[name]), ({"teacher": other_teacher, "view": other_view}[name], fp["base"])):
            with pytest.raises(CacheMismatchError) as e:
                TeacherCache.open(cache.path, expected_fingerprint=want)
            assert want in str(e.value) and cache.manifest["teacher"]["fingerprint"] in str(e.value)
    assert base_id != images_id
    with pytest.raises(CacheMismatchError, match="requested source") as e:
        TeacherCache.open(base.path, expected_fingerprint=fp["base"], expected_source=images_id)
    assert base_id["files_sha256"] in str(e.value) and images_id["files_sha256"] in str(e.value)
    np.testing.assert_raises(AssertionError, np.testing.assert_array_equal, np.asarray(base.embedding),
                             np.asarray(other_images.embedding))  # the other images' cache holds their own outputs


def test_corrupt_image_skipped_and_counted(tmp_path, teacher):
    _write_images(tmp_path / "imgs", 9)
    (tmp_path / "imgs" / "cat" / "0003.png").write_bytes(b"not a png")  # index 1 within the sorted files
    src = ImageFolderSource(tmp_path / "imgs", "tiny/train")
    bad_index = [str(f) for f in src.files].index(str(tmp_path / "imgs" / "cat" / "0003.png"))
    with pytest.warns(BadImageWarning, match="0003.png"):
        cache = cache_source(teacher, src, tmp_path / "cache", shard_size=4, batch_size=3, num_workers=0)
    assert cache.manifest["bad"] == 1 and cache.manifest["shards"][bad_index // 4]["bad"] == 1
    assert cache.valid.sum() == 8 and not cache.valid[bad_index]
    assert not cache.embedding[bad_index].any()  # the bad row is zero
    assert cache.embedding[np.flatnonzero(cache.valid)].any(axis=1).all()


def test_aug_views_store_params(tmp_path, teacher):
    _write_images(tmp_path / "imgs", 5)
    src = ImageFolderSource(tmp_path / "imgs", "tiny/train")
    cache = cache_source(teacher, src, tmp_path / "cache", views=3, seed=7, shard_size=2, num_workers=0)
    assert cache.path.name == view_name(3, 7) == "aug3-s7"
    assert cache.embedding.shape == (5, 3, 32) and cache.aug_params.shape == (5, 3, 5)
    assert cache.manifest["view"]["views"] == 3 and cache.manifest["view"]["seed"] == 7
    for i, k in [(0, 0), (3, 2), (4, 1)]:
        p = sample_aug_params(7, "tiny/train", i, k)
        np.testing.assert_allclose(cache.aug_params[i][k], [p.top, p.left, p.height, p.width, float(p.flip)], rtol=1e-6)
        want = teacher(apply_aug(src.load(i), p, teacher.view)[None])["embedding"][0].numpy()
        np.testing.assert_allclose(cache.embedding[i][k].astype(np.float32), want, rtol=2e-3, atol=2e-3)
    assert not np.array_equal(cache.embedding[0][0], cache.embedding[0][1])  # different crops, different outputs
    # the plain view of the same source is another cache, not a mismatch
    assert cache_source(teacher, src, tmp_path / "cache", shard_size=2, num_workers=0).embedding.shape == (5, 32)


def test_aug_views_hold_one_batch_of_pixels_whatever_k(tmp_path, teacher, monkeypatch):
    """Issue 17: K views of a batch of images went through one forward (batch_size x K images, 11 GB at K=16).
    The pixels of a forward (and of the loader's batch it flattens) must stay one batch whatever K and N are."""
    _write_images(tmp_path / "imgs", 24)
    src = ImageFolderSource(tmp_path / "imgs", "tiny/train")
    forward, seen = teacher.forward, []

    def counting(x):
        seen.append(x.numel() * x.element_size())
        return forward(x)

    monkeypatch.setattr(teacher, "forward", counting)
    image = 3 * teacher.view.image_size ** 2 * 4  # bytes of one float32 view at the teacher's size
    peaks = {}
    for k in (2, 16):  # 8x the views
        seen.clear()
        cache = cache_source(teacher, src, tmp_path / f"cache{k}", views=k, shard_size=24, batch_size=8, num_workers=0)
        assert cache.embedding.shape == (24, k, 32) and cache.valid.all()
        assert sum(seen) == 24 * k * image  # every view was computed
        peaks[k] = max(seen) // image
    assert peaks == {2: 8, 16: 8}  # one batch of 8 views per forward, not 8 images x K views


def _run_script(tmp_path: Path, images: Path, cache_dir: Path, devices: int, sleep: float = 0.0) -> subprocess.Popen:
    script = tmp_path / "run_cache.py"
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(images), str(cache_dir), str(devices), str(sleep)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _shard_stats(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("shard_*")}


@pytest.mark.slow
def test_resume_after_sigkill_is_identical(tmp_path, images, reference):
    cache_dir = tmp_path / "cache"
    folder = cache_dir / reference.path.relative_to(_root(reference))
    proc = _run_script(tmp_path, images, cache_dir, 1, sleep=0.7)
    deadline = time.monotonic() + 120
    while not list(folder.glob("shard_*.meta.json")):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in folder.glob("shard_*.meta.json"))
    assert 1 <= len(done) < N_IMAGES // SHARD and not (folder / "manifest.json").exists()
    before = _shard_stats(folder)
    finished = {k: v for k, v in before.items() if k.split(".")[0] in {d.split(".")[0] for d in done}}

    proc = _run_script(tmp_path, images, cache_dir, 1)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, out
    after = _shard_stats(folder)
    assert {k: after[k] for k in finished} == finished  # finished shards untouched: same inode and mtime
    resumed = TeacherCache.open(folder, expected_fingerprint=reference.manifest["teacher"]["fingerprint"])
    _assert_same(resumed, reference)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, images, reference):
    cache_dir = tmp_path / "cache"
    proc = _run_script(tmp_path, images, cache_dir, 2, sleep=1.0)  # slow shards: neither process can take them all
    out = proc.communicate(timeout=240)[0]
    assert proc.returncode == 0, out
    folder = cache_dir / reference.path.relative_to(_root(reference))
    two = TeacherCache.open(folder, expected_fingerprint=reference.manifest["teacher"]["fingerprint"],
                            expected_source=reference.manifest["source"]["identity"])
    _assert_same(two, reference)
    assert {s["rank"] for s in two.manifest["shards"]} == {0, 1}  # both workers computed shards


def test_rank_comes_from_torchrun_else_slurm(monkeypatch):
    """Lightning's cluster environments decide, as they do for training: torchrun, then an srun task, else alone."""
    for name in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE",
                 "SLURM_JOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    assert rank_world() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    assert rank_world() == (3, 4)  # srun: one task per process
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # Lightning's rule: an interactive allocation is no launcher
    assert rank_world() == (0, 1)
    monkeypatch.delenv("SLURM_JOB_NAME")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_world() == (3, 4)  # RANK alone is not torchrun
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    assert rank_world() == (1, 2)  # torchrun inside an allocation wins
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE")
    with pytest.raises(EdgeDistillError, match="SLURM environment refused: .*--ntasks-per-node"):
        rank_world()  # Lightning refuses --ntasks without --ntasks-per-node; one line, not a traceback
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    with pytest.raises(EdgeDistillError, match="rank=5 is out of range for world_size=2"):
        rank_world(rank=5)


def test_same_named_folders_in_different_places_never_collide(tmp_path, teacher, capsys):
    """Issue 17: a/my_data and b/my_data both have source key 'my_data/train'; each gets its own cache, and a folder
    whose images change gets a new one (said in one line), instead of a refusal naming the other project."""
    caches = {}
    for place, seed in (("a", 1), ("b", 2)):
        _write_images(tmp_path / place / "my_data" / "train", 6, seed)
        data = DataConfig(dataset="imagefolder", root=str(tmp_path / place / "my_data"), val_fraction=0.0)
        (caches[place],) = ensure_cache(data, TEACHER_CFG, "train", tmp_path / "cache", shard_size=4, num_workers=0,
                                        teacher=teacher).values()
    a, b = caches["a"], caches["b"]
    assert a.manifest["source"]["key"] == b.manifest["source"]["key"] == "my_data/train"
    assert a.path != b.path and a.path.parent.parent == b.path.parent.parent  # same key, two identities
    for c, place in ((a, "a"), (b, "b")):  # each holds its own images' outputs
        src = _source_of(c, tmp_path / place / "my_data")
        x = torch.stack([eval_transform(teacher.view)(src.load(i)) for i in range(len(src))])
        np.testing.assert_allclose(c.embedding[:].astype(np.float32), teacher(x)["embedding"].numpy(), rtol=2e-3,
                                   atol=2e-3)
    assert not np.array_equal(np.asarray(a.embedding), np.asarray(b.embedding))
    # a changed folder: its images differ, so does its identity: a new cache, and one line saying why
    _write_images(tmp_path / "a" / "my_data" / "train", 7, seed=3)
    capsys.readouterr()
    data = DataConfig(dataset="imagefolder", root=str(tmp_path / "a" / "my_data"), val_fraction=0.0)
    (changed,) = ensure_cache(data, TEACHER_CFG, "train", tmp_path / "cache", shard_size=4, num_workers=0,
                              teacher=teacher).values()
    assert changed.path not in (a.path, b.path) and len(changed) == 7
    err = capsys.readouterr().err
    assert "my_data/train: its images differ from those cached in" in err and "computing a new cache" in err
