"""Faults and hostile files, as a specification: nothing lost, nothing run that was not asked.

- A hostile checkpoint or pickle is refused, and the marker file its payload would write never appears.
- ``kill -9`` in the middle of ``cache`` and ``train`` (some shards or an epoch written, the rest not), then a rerun,
  keeps the finished work (shards untouched, epochs not retrained) and gives the same arrays and final weights as an
  uninterrupted run (seeded).
- A torn checkpoint and a damaged cache shard are detected and recovered from.
- A symlink loop, an unreadable folder and a full disk give one line and lose nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, TINY_CLIP, tiny_teacher_cfg
from edgedistill import storage
from edgedistill.cache import CacheDamagedError, TeacherCache, ensure_cache
from edgedistill.cli import main
from edgedistill.config import DataConfig, TrainConfig
from edgedistill.errors import EdgeDistillError

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    """Pickled, it runs ``open(marker, 'w')`` when unpickled: the attack a file a user is handed could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", EDGEDISTILL_NO_PROGRESS="1")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + str(ROOT / "tests") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _folder(root: Path, n: int = 8, classes=("cat", "dog", "ship")) -> Path:
    rng = np.random.default_rng(0)
    for c, colour in zip(classes, [(220, 40, 40), (40, 220, 40), (40, 40, 220)]):
        (root / c).mkdir(parents=True)
        for k in range(n):
            img = np.clip(np.array(colour) + rng.integers(-40, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / c / f"{k:02d}.png")
    return root


def _train_cfgs(folder: Path, out: Path, **kw):
    data = DataConfig(dataset="imagefolder", root=str(folder), val_fraction=0.25)
    train = TrainConfig(**{"student": "test_resnet", "image_size": 16, "epochs": 3, "batch_size": 6, "num_workers": 0,
                           "lr": 0.05, "warmup_epochs": 0.5, "out_dir": str(out), "name": "run",
                           "cache_dir": str(out.parent / "cache"), **kw})
    return data, tiny_teacher_cfg(), train


# ----------------------------------------------------------------------------- hostile files


def test_hostile_checkpoint_is_refused_and_its_payload_never_runs(tmp_path: Path) -> None:
    from edgedistill.training.fit import train

    marker = tmp_path / "pwned"
    data, teacher, cfg = _train_cfgs(_folder(tmp_path / "data"), tmp_path / "runs", resume=True)
    ckpt = tmp_path / "runs" / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    for name in ("last.ckpt", "best-epoch000.ckpt"):
        torch.save({"state_dict": {}, "x": Payload(marker)}, ckpt / name)
    with pytest.raises(EdgeDistillError, match="No checkpoint .* loads as plain data"):
        train(data, teacher, cfg)
    assert not marker.exists()
    assert not (tmp_path / "runs" / "run" / "student.safetensors").exists()  # nothing replaced


def test_crafted_best_path_outside_the_run_is_ignored(tmp_path: Path) -> None:
    """Lightning restores ``best_model_path`` from last.ckpt: a crafted one may point anywhere; it must not be read."""
    from edgedistill.training.fit import train

    marker, evil = tmp_path / "pwned", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Payload(marker)}, evil)
    data, teacher, cfg = _train_cfgs(_folder(tmp_path / "data"), tmp_path / "runs", epochs=1)
    run = train(data, teacher, cfg)
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    for key, state in ckpt["callbacks"].items():
        if "ModelCheckpoint" in key:
            state["best_model_path"], state["best_model_score"] = str(evil), torch.tensor(2.0)  # unbeatable
    torch.save(ckpt, last)
    train(data, teacher, TrainConfig(**{**cfg.__dict__, "epochs": 2, "resume": True}))
    assert not marker.exists()
    assert storage.read_json(run / "student.json")["checkpoint"].startswith("checkpoints/")


def test_hostile_pickle_in_a_cache_shard_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = DataConfig(dataset="imagefolder", root=str(_folder(tmp_path / "data", n=4)), val_fraction=0.0)
    (cache,) = ensure_cache(data, tiny_teacher_cfg(), "train", tmp_path / "cache", shard_size=4, num_workers=0).values()
    shard = cache.path / "shard_00000.embedding.npy"
    np.save(shard, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    planted = shard.read_bytes()
    assert b"'descr': '|O'" in planted and b"pwned" in planted  # the shard now holds a pickled object array
    with pytest.raises(CacheDamagedError, match="shard 0 is damaged"):
        TeacherCache.open(cache.path, expected_fingerprint=cache.manifest["teacher"]["fingerprint"])
    with pytest.raises(EdgeDistillError, match="damaged"):
        storage.load_npy(shard)
    assert not marker.exists()
    assert shard.read_bytes() == planted  # refused, not silently replaced before the checks above ran
    np.load(shard, allow_pickle=True)  # and the payload was live: an unsafe load runs it
    assert marker.exists()


# ----------------------------------------------------------------------------- kill -9, then rerun
# Each child is slowed down (a sleep per decoded image, per optimizer step) so that the parent can watch its files
# and kill it when it is provably mid-work: some shards or an epoch's checkpoint written, the rest not.

_CACHE_CHILD = textwrap.dedent(f"""
    import sys, time
    import PIL.Image
    open_ = PIL.Image.open
    def slow_open(*args, **kwargs):
        time.sleep(0.05)
        return open_(*args, **kwargs)
    PIL.Image.open = slow_open
    from edgedistill.teachers.openclip import register_model_config
    register_model_config({TINY!r}, {TINY_CLIP!r})
    from edgedistill.cache import ensure_cache
    from edgedistill.config import DataConfig
    from conftest import tiny_teacher_cfg
    ensure_cache(DataConfig(dataset="imagefolder", root=sys.argv[1], val_fraction=0.0), tiny_teacher_cfg(), "train",
                 sys.argv[2], shard_size=4, num_workers=0, teacher=None)
""")

_TRAIN_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    step = torch.optim.SGD.step
    def slow_step(self, *args, **kwargs):
        time.sleep(0.15)
        return step(self, *args, **kwargs)
    torch.optim.SGD.step = slow_step
    from test_faults import _train_cfgs
    from edgedistill.training.fit import train
    data, teacher, cfg = _train_cfgs(Path(sys.argv[1]), Path(sys.argv[2]), resume=True)
    train(data, teacher, cfg)
""")


def _kill_when(script: str, args: list[str], ready, timeout: float = 120.0) -> None:
    """Start ``script`` and SIGKILL it as soon as ``ready()`` holds; fails if it finished or timed out first."""
    child = subprocess.Popen([sys.executable, "-c", script, *args], env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert child.poll() is None, f"the child ended before the kill point: {child.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the child never reached the kill point"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()


def _finished_shards(cache_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file of every finished shard (its meta.json written last) -> (inode, mtime_ns)."""
    out = {}
    for meta in cache_dir.rglob("shard_*.meta.json"):
        for f in meta.parent.glob(meta.name.replace(".meta.json", ".*")):
            st = f.stat()
            out[str(f)] = (st.st_ino, st.st_mtime_ns)
    return out


@pytest.mark.slow
def test_kill9_mid_cache_then_rerun_keeps_finished_shards_and_gives_the_same_arrays(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "data", n=12)  # 36 images: 9 shards of 4
    data = DataConfig(dataset="imagefolder", root=str(folder), val_fraction=0.0)
    cache_dir = tmp_path / "cache"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the children: bit-identical float math
    try:
        (ref,) = ensure_cache(data, tiny_teacher_cfg(), "train", tmp_path / "ref", shard_size=4, num_workers=0).values()
        seen = {}
        for at in (2, 5):  # killed after 2 finished shards, then the rerun killed after 5
            _kill_when(_CACHE_CHILD, [str(folder), str(cache_dir)],
                       lambda at=at: len(list(cache_dir.rglob("shard_*.meta.json"))) >= at)
            done = _finished_shards(cache_dir)
            metas = list(cache_dir.rglob("shard_*.meta.json"))
            assert at <= len(metas) < 9 and not list(cache_dir.rglob("manifest.json")), "the kill did not land mid-work"
            assert all(done[f] == stamp for f, stamp in seen.items()), "the rerun recomputed a finished shard"
            seen = done
        (got,) = ensure_cache(data, tiny_teacher_cfg(), "train", cache_dir, shard_size=4, num_workers=0).values()
    finally:
        torch.set_num_threads(threads)
    after = _finished_shards(cache_dir)
    assert all(after[f] == stamp for f, stamp in seen.items()), "the resume recomputed a finished shard"
    assert len(after) > len(seen)  # and computed the rest
    np.testing.assert_array_equal(np.asarray(got.embedding), np.asarray(ref.embedding))
    assert got.manifest["num_shards"] == 9
    assert not list(got.path.glob(".*.tmp")), "a killed write left a temp file in the cache"


@pytest.mark.slow
def test_kill9_mid_train_then_resume_skips_finished_epochs_and_gives_the_same_weights(tmp_path: Path, monkeypatch) -> None:
    from edgedistill.training.fit import train

    folder = _folder(tmp_path / "data", n=12)  # 27 training images, batch 6, 3 epochs
    steps = []
    step = torch.optim.SGD.step

    def counted(self, *args, **kwargs):
        steps.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counted)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = train(*_train_cfgs(folder, tmp_path / "ref"))  # uninterrupted, the same seed
        full = len(steps)
        assert full >= 6 and full % 3 == 0  # 3 epochs of the same number of steps
        ckpts = tmp_path / "runs" / "run" / "checkpoints"
        _kill_when(_TRAIN_CHILD, [str(folder), str(tmp_path / "runs")], lambda: (ckpts / "last.ckpt").exists())
        assert not (tmp_path / "runs" / "run" / "student.safetensors").exists(), "the kill did not land mid-training"
        done = torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"]
        assert 0 < done < full
        steps.clear()
        run = train(*_train_cfgs(folder, tmp_path / "runs", resume=True))
    finally:
        torch.set_num_threads(threads)
    assert len(steps) == full - done, "the resume did not start from the checkpoint"
    a, b = storage.load_safetensors(ref / "student.safetensors"), storage.load_safetensors(run / "student.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert storage.read_json(run / "metrics.json")["best_val_acc"] == storage.read_json(ref / "metrics.json")["best_val_acc"]


# ----------------------------------------------------------------------------- torn and damaged files


def test_torn_checkpoint_falls_back_to_the_last_good_one(tmp_path: Path, capsys) -> None:
    from edgedistill.training.fit import train

    data, teacher, cfg = _train_cfgs(_folder(tmp_path / "data"), tmp_path / "runs", epochs=1)
    run = train(data, teacher, cfg)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a full disk's torn write, by an older version
    train(data, teacher, TrainConfig(**{**cfg.__dict__, "epochs": 2, "resume": True}))
    err = capsys.readouterr().err
    assert "last.ckpt cannot be loaded as plain data" in err and "resuming from best-epoch000.ckpt" in err
    m = storage.read_json(run / "metrics.json")
    assert m["finished"] and [h["epoch"] for h in m["history"]] == [0, 1]


@pytest.mark.parametrize("damage", ["overwrite", "swap", "truncate", "delete", "header"])
def test_damaged_shard_is_named_and_exactly_it_is_recomputed(tmp_path: Path, damage: str) -> None:
    data = DataConfig(dataset="imagefolder", root=str(_folder(tmp_path / "data", n=4)), val_fraction=0.0)
    (ref,) = ensure_cache(data, tiny_teacher_cfg(), "train", tmp_path / "cache", shard_size=4, num_workers=0).values()
    want = np.asarray(ref.embedding).copy()
    shard = ref.path / "shard_00001.embedding.npy"
    other = ref.path / "shard_00002.embedding.npy"
    if damage == "overwrite":
        arr = np.load(shard)
        arr[0, :3] += 1
        np.save(shard, arr)
    elif damage == "swap":
        a, b = shard.read_bytes(), other.read_bytes()
        shard.write_bytes(b)
        other.write_bytes(a)
    elif damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-10])
    elif damage == "delete":
        shard.unlink()
    else:
        shard.write_bytes(b"\x00" * shard.stat().st_size)
    fp = ref.manifest["teacher"]["fingerprint"]
    with pytest.raises(CacheDamagedError, match=r"shard 1 is damaged .*rerun 'edgedistill cache'"):
        TeacherCache.open(ref.path, expected_fingerprint=fp)
    untouched = ref.path / "shard_00000.embedding.npy"
    before = (untouched.stat().st_ino, untouched.stat().st_mtime_ns)
    (fixed,) = ensure_cache(data, tiny_teacher_cfg(), "train", tmp_path / "cache", shard_size=4, num_workers=0).values()
    np.testing.assert_array_equal(np.asarray(fixed.embedding), want)
    assert (untouched.stat().st_ino, untouched.stat().st_mtime_ns) == before  # only the damaged shards were redone


# ----------------------------------------------------------------------------- folders and disks


def test_symlink_loop_gives_each_image_once(tmp_path: Path) -> None:
    from edgedistill.data.splits import build_splits

    folder = _folder(tmp_path / "data", n=2)
    os.symlink("..", folder / "cat" / "up")
    with pytest.warns(UserWarning, match="symbolic link loop"):
        splits = build_splits(DataConfig(dataset="imagefolder", root=str(folder), val_fraction=0.0))
    src = next(iter(splits.sources.values()))
    assert len(src) == 6 and sorted(src.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert all(Path(f).parent.name == src.classes[y] for f, y in zip(src.files, src.labels))


def test_unreadable_folder_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = _folder(tmp_path / "data", n=2)
    real_scandir = os.scandir

    def scandir(path):  # root ignores chmod 000, so the permission error is raised here
        if Path(path).name == "dog":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    code = main(["cache", "--data.dataset", "imagefolder", "--data.root", str(folder), "--split", "train"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "dog" in err[0] and "cannot be read" in err[0]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 32 KiB tmpfs (eight pages; needs CAP_SYS_ADMIN); skipped where it cannot be mounted (the RLIMIT_FSIZE test
    below runs everywhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mount)],
                                                         capture_output=True).returncode != 0:
        pytest.skip("cannot mount a size-capped tmpfs here (needs CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def _errors(stderr: str) -> list[str]:
    """A child's error lines (the tiny teacher's random-weights warnings aside); none may be a traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.strip().splitlines() if "warning" not in line.lower() and "random weights" not in line]


def _cache_argv(folder: Path, cache_dir: Path) -> list[str]:
    return ["cache", "--data.dataset", "imagefolder", "--data.root", str(folder), "--split", "train",
            "--teacher.kind", "openclip", "--teacher.model", TINY, "--teacher.pretrained", "random",
            "--teacher.device", "cpu", "--cache_dir", str(cache_dir), "--shard_size", "8", "--num_workers", "0"]


def _assert_kept_shards_sound(cache_dir: Path, ref) -> list[Path]:
    """Every shard marked finished holds exactly the bytes it recorded and the reference cache's rows."""
    metas = sorted(cache_dir.rglob("shard_*.meta.json"))
    want = np.asarray(ref.embedding)
    for meta in metas:
        m = storage.read_json(meta)
        for name, rec in m["checksums"].items():
            f = meta.parent / m["files"][name]
            assert f.stat().st_size == rec["size"] and storage.file_sha256(f) == rec["sha256"], f
        np.testing.assert_array_equal(np.load(meta.parent / m["files"]["embedding"]), want[m["start"]:m["stop"]])
    return metas


def _reference_cache(folder: Path, cache_dir: Path):
    data = DataConfig(dataset="imagefolder", root=str(folder), val_fraction=0.0)
    (ref,) = ensure_cache(data, tiny_teacher_cfg(), "train", cache_dir, shard_size=8, num_workers=0).values()
    return ref


def test_full_disk_is_one_line_and_loses_nothing(tmp_path: Path, small_disk: Path, capsys) -> None:
    folder = _folder(tmp_path / "data", n=30)
    ref = _reference_cache(folder, tmp_path / "ref")
    code = main(_cache_argv(folder, small_disk))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no space left on the device" in err[0], err
    leftovers = [p for p in small_disk.rglob(".*.tmp")]
    assert not leftovers, leftovers  # no torn temp file
    assert _assert_kept_shards_sound(small_disk, ref), "the shards written before the disk filled are kept"


def test_file_size_limit_is_one_line_and_loses_nothing(tmp_path: Path) -> None:
    """A disk quota as an unprivileged user meets it, simulated for anyone (root included) by RLIMIT_FSIZE: the
    shards (640 B) fit, the manifest (~3 KiB) does not. One line, no temp file, the shards kept and sound, and a
    rerun finishes without recomputing them."""
    from conftest import CLI_CHILD, run_unprivileged

    folder = _folder(tmp_path / "data", n=30)
    cache_dir = tmp_path / "cache"
    ref = _reference_cache(folder, tmp_path / "ref")
    p = run_unprivileged(CLI_CHILD, *_cache_argv(folder, cache_dir), fsize=2048)
    err = _errors(p.stderr)
    assert p.returncode == 2 and len(err) == 1, p.stderr[-3000:]
    assert err[0].startswith("error: Cannot write") and "manifest.json: File too large" in err[0], err
    assert not list(cache_dir.rglob(".*.tmp")) and not list(cache_dir.rglob("manifest.json"))
    metas = _assert_kept_shards_sound(cache_dir, ref)
    assert len(metas) == ref.manifest["num_shards"]
    stamps = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in cache_dir.rglob("shard_*")}
    assert main(_cache_argv(folder, cache_dir)) == 0
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in stamps} == stamps  # nothing recomputed
    assert len(list(cache_dir.rglob("manifest.json"))) == 1


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A folder no one may write (chmod 555); root, too, meets the mode in ``run_unprivileged``."""
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    yield ro
    os.chmod(ro, 0o755)


@pytest.mark.parametrize("command", ["train", "cache", "export", "eval", "predict"])
def test_read_only_output_folders_are_one_line(tmp_path: Path, read_only_dir: Path, command: str, capsys) -> None:
    from conftest import CLI_CHILD, run_unprivileged

    folder = _folder(tmp_path / "data", n=4)
    data = ["--data.dataset", "imagefolder", "--data.root", str(folder)]
    tiny = ["--teacher.kind", "openclip", "--teacher.model", TINY, "--teacher.pretrained", "random", "--teacher.device", "cpu"]
    run = None
    if command in ("export", "eval", "predict"):
        from edgedistill.training.fit import train

        run = str(train(*_train_cfgs(folder, tmp_path / "runs", epochs=1)))
        capsys.readouterr()
    out = str(read_only_dir / "x")
    argv = {
        "train": ["train", *data, "--train.student", "test_resnet", "--train.image_size", "16", "--train.out_dir", out,
                  "--train.cache_dir", str(tmp_path / "cache")],
        "cache": ["cache", *data, *tiny, "--split", "train", "--cache_dir", out, "--num_workers", "0"],
        "export": ["export", "--model", run, "--out", out] if run else [],
        "eval": ["eval", "--run", run, *data, "--split", "val", "--out", out, "--num_workers", "0",
                 "--cache_dir", str(tmp_path / "cache")] if run else [],
        "predict": ["predict", run, str(folder / "cat" / "00.png"), "--out", f"{out}.json"] if run else [],
    }[command]
    p = run_unprivileged(CLI_CHILD, *argv)
    err = _errors(p.stderr)
    assert p.returncode == 2 and len(err) == 1 and "Cannot write" in err[0] and str(read_only_dir) in err[0], p.stderr[-3000:]
    assert os.listdir(read_only_dir) == []


def test_corrupt_student_files_are_one_line(tmp_path: Path, capsys) -> None:
    from edgedistill.students import create_student

    run = tmp_path / "run"
    storage.save_safetensors(run / "student.safetensors", create_student("test_resnet", 3).state_dict())
    storage.write_json(run / "student.json", {"arch": "test_resnet", "num_outputs": 3, "class_names": ["a", "b", "c"],
                                              "view": {"image_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3}})
    img = tmp_path / "x.png"
    Image.new("RGB", (16, 16)).save(img)
    assert main(["predict", str(run), str(img)]) == 0
    capsys.readouterr()
    (run / "student.json").write_text("{ not json")
    assert main(["predict", str(run), str(img)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "student.json is damaged" in err[0]
    storage.write_json(run / "student.json", {"arch": "test_resnet", "num_outputs": 3, "class_names": ["a", "b", "c"],
                                              "view": {"image_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3}})
    (run / "student.safetensors").write_bytes(b"\x00\x01garbage")
    assert main(["predict", str(run), str(img)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "student.safetensors is damaged" in err[0]
    assert oct((tmp_path / "run" / "student.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
