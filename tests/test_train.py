"""Training end to end on a tiny synthetic ImageFolder: run directory, resume after a kill, NaN stop, DDP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from conftest import tiny_teacher_cfg
from edgedistill import storage
from edgedistill.config import DataConfig, TeacherConfig, TrainConfig
from edgedistill.errors import ConfigError
from edgedistill.heads import check_head_target
from edgedistill.losses import resolve_loss
from edgedistill.students import create_student
from edgedistill.training.fit import train
from edgedistill.training.module import CachedTargets, DistillModule, NonFiniteLossError, warmup_cosine

TINY_TEACHER = tiny_teacher_cfg()  # a text tower for text heads, 32-d embeddings
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

CLASSES = ("cat", "dog", "ship")
COLOURS = {"cat": (220, 40, 40), "dog": (40, 220, 40), "ship": (40, 40, 220)}


def write_folder(root: Path, n_train: int = 8, n_test: int = 3) -> Path:
    """``root/{train,test}/<class>/NN.png``: 16x16 images coloured by class plus noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for k in range(n):
                noise = rng.integers(-40, 40, (16, 16, 3))
                Image.fromarray(np.clip(np.array(COLOURS[c]) + noise, 0, 255).astype(np.uint8)).save(root / split / c / f"{k:02d}.png")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "data")


def _cfgs(folder: Path, out: Path, **train_kw):
    data = DataConfig(dataset="imagefolder", root=str(folder), val_fraction=0.25)
    kw = dict(student="test_resnet", image_size=16, epochs=2, batch_size=6, num_workers=0, lr=0.05,
              warmup_epochs=0.5, out_dir=str(out), name="run")
    kw.update(train_kw)
    return data, TeacherConfig(), TrainConfig(**kw)


def test_train_writes_run_directory(folder: Path, tmp_path: Path) -> None:
    data, teacher, cfg = _cfgs(folder, tmp_path / "runs", eval_test=True)
    run = train(data, teacher, cfg)
    for f in ("config.yaml", "metrics.json", "student.safetensors", "student.json", "checkpoints/last.ckpt",
              "logs/session0/metrics.csv"):
        assert (run / f).is_file(), f
    assert list((run / "logs" / "session0").glob("events.out.tfevents.*")), "TensorBoard log missing"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["student"] == "test_resnet"

    m = storage.read_json(run / "metrics.json")
    assert m["finished"] is True and m["epochs_completed"] == 2 and len(m["history"]) == 2
    assert m["n_train"] == 18 and m["n_val"] == 6 and m["selected_on"] == "val/acc"
    assert [h["epoch"] for h in m["history"]] == [0, 1] and m["history"][1]["step"] == 6  # 18 imgs / 6 per batch
    assert m["best_val_acc"] == max(h["val_acc"] for h in m["history"])
    assert m["best_epoch"] == next(h["epoch"] for h in m["history"] if h["val_acc"] == m["best_val_acc"])
    assert m["elapsed_s"] > 0 and m["images_per_s"] > 0
    assert all(np.isfinite(h["train_loss"]) and h["train_loss"] == h["train_ce"] for h in m["history"])
    # the cosine schedule ends at lr 0
    assert m["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-9)

    # the exported student is the *best* checkpoint and reproduces its val accuracy
    man = storage.read_json(run / "student.json")
    assert man["arch"] == "test_resnet" and man["num_outputs"] == 3 and man["class_names"] == list(CLASSES)
    assert man["view"]["image_size"] == 16 and man["checkpoint"] == m["best_checkpoint"]
    student = create_student(man["arch"], man["num_outputs"], small_input=man["small_input"])
    student.load_state_dict(load_file(str(run / "student.safetensors")))
    student.eval()
    from edgedistill.data import build_splits, eval_transform, student_view

    splits = build_splits(data)

    def accuracy(split: str) -> float:
        ds = splits.dataset(split, eval_transform(student_view(16)))
        items = [ds[i] for i in range(len(ds))]
        with torch.no_grad():
            pred = student(torch.stack([it["image"] for it in items])).argmax(1)
        return (pred == torch.tensor([it["label"] for it in items])).float().mean().item()

    assert accuracy("val") == pytest.approx(m["best_val_acc"], abs=1e-6)
    assert accuracy("test") == pytest.approx(m["test_acc"], abs=1e-6)  # test read once, with the val-selected student


def test_val_every_validates_every_nth_epoch_and_counts_all_epochs(folder: Path, tmp_path: Path) -> None:
    data, teacher, cfg = _cfgs(folder, tmp_path / "runs", epochs=4, val_every=2)
    m = storage.read_json(train(data, teacher, cfg) / "metrics.json")
    assert [h["epoch"] for h in m["history"]] == [1, 3]  # validated after epochs 2 and 4 only
    assert m["epochs_completed"] == 4 and m["history"][-1]["step"] == 12  # 18 imgs / 6 per batch x 4 epochs


def test_existing_run_needs_resume(folder: Path, tmp_path: Path) -> None:
    data, teacher, cfg = _cfgs(folder, tmp_path / "runs", epochs=1, max_steps=1)
    run = train(data, teacher, cfg)
    m = storage.read_json(run / "metrics.json")  # a max_steps stop mid-epoch is still recorded, without val
    assert m["finished"] and m["history"][0]["step"] == 1 and m["history"][0]["val_acc"] is None
    assert m["history"][0]["epoch"] == 0 and m["epochs_completed"] == 1  # the epoch it stopped in, not the next
    with pytest.raises(ConfigError, match="already holds a checkpoint.*resume"):
        train(data, teacher, cfg)


# Run in a child process: train, and hang at the start of epoch 1 (after epoch 0's checkpoint)
# until the test SIGKILLs it, so the kill lands mid-run, between two steps.
_KILLED_CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_train import _cfgs
from edgedistill.training.module import DistillModule
from edgedistill.training.fit import train

folder, out = Path(sys.argv[1]), Path(sys.argv[2])

def on_train_epoch_start(self):
    if self.current_epoch == 1:
        (out / "at-epoch-1").touch()
        time.sleep(600)

DistillModule.on_train_epoch_start = on_train_epoch_start
train(*_cfgs(folder, out, epochs=3))
"""


def test_resume_after_sigkill_continues_from_saved_epoch(folder: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGEDISTILL_NO_PROGRESS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _KILLED_CHILD, str(folder), str(out), str(Path(__file__).parent)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "at-epoch-1").exists():
            assert child.poll() is None, f"the child exited early:\n{child.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "the child never reached epoch 1"
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    run = out / "run"
    first = storage.read_json(run / "metrics.json")
    assert first["finished"] is False and len(first["history"]) == 1
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0  # plain data
    assert not (run / "student.safetensors").exists()  # written only when a run finishes

    started: list[tuple[int, int]] = []

    def on_train_epoch_start(self):
        started.append((self.current_epoch, self.global_step))

    monkeypatch.setattr(DistillModule, "on_train_epoch_start", on_train_epoch_start, raising=False)
    data, teacher, cfg = _cfgs(folder, out, epochs=3, resume=True)
    train(data, teacher, cfg)
    assert started == [(1, 3), (2, 6)]  # continued at epoch 1, step 3: epoch 0 was not redone
    m = storage.read_json(run / "metrics.json")
    assert m["finished"] is True and [h["epoch"] for h in m["history"]] == [0, 1, 2]
    assert m["history"][0] == first["history"][0]  # the killed session's history survives
    assert m["elapsed_s"] >= first["elapsed_s"]
    # the first session's CSV log is kept, the resumed one logs beside it
    assert (run / "logs" / "session0" / "metrics.csv").is_file() and (run / "logs" / "session1" / "metrics.csv").is_file()
    assert (run / "student.safetensors").is_file()


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(folder: Path, tmp_path: Path, monkeypatch) -> None:
    data, teacher, cfg = _cfgs(folder, tmp_path / "runs", epochs=3)
    compute = DistillModule.compute_loss

    def nan_from_epoch_1(self, batch):
        parts = compute(self, batch)
        if self.current_epoch >= 1:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(DistillModule, "compute_loss", nan_from_epoch_1)
    with pytest.raises(NonFiniteLossError, match=r"Non-finite training loss at epoch 1.*last good checkpoint stays"):
        train(data, teacher, cfg)
    last = tmp_path / "runs" / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert storage.read_json(last.parents[1] / "metrics.json")["finished"] is False


@pytest.mark.parametrize(
    "kw",
    [
        # response KD on K=2 cached augmented views, CE where labels exist
        dict(target="logits", head="text", views=2, temperature=2.0, ce_weight=0.5),
        # feature KD with the teacher run online on the same crop
        dict(target="embedding", head="text", online_teacher=True, feature_loss="cosine"),
    ],
    ids=["logits-cached-views", "embedding-online"],
)
def test_distillation_runs(folder: Path, tmp_path: Path, kw: dict) -> None:
    data, _, cfg = _cfgs(folder, tmp_path / "runs", epochs=1, cache_dir=str(tmp_path / "cache"), **kw)
    run = train(data, TINY_TEACHER, cfg)
    m = storage.read_json(run / "metrics.json")
    h = m["history"][0]
    assert m["finished"] and np.isfinite(h["train_kd"]) and h["train_kd"] > 0
    # the loss is the weighted sum of its logged parts
    assert h["train_loss"] == pytest.approx(cfg.kd_weight * h["train_kd"] + cfg.ce_weight * h["train_ce"], rel=1e-4)
    man = storage.read_json(run / "student.json")
    assert man["target"] == kw["target"] and man["head"]["kind"] == "text" and man["teacher"]["embed_dim"] == 32
    if kw["target"] == "embedding":
        from edgedistill.heads import load_head

        assert man["num_outputs"] == 32
        head = load_head(run / "head")  # saved beside the student: the run directory is self-contained
        student = create_student("test_resnet", 32)
        student.load_state_dict(load_file(str(run / "student.safetensors")))
        assert head(student.eval()(torch.randn(2, 3, 16, 16))).shape == (2, 3)
    else:
        teacher_caches = [p for p in (tmp_path / "cache").rglob("manifest.json") if "pixels" not in p.parts]
        assert man["num_outputs"] == 3 and {p.parent.name for p in teacher_caches} == {"aug2-s0"}


def test_train_config_errors_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="train.target='soft'"):
        TrainConfig(target="soft")
    with pytest.raises(ConfigError, match="train.loss='ce' is invalid with train.target='logits'.*Losses of 'logits': kd"):
        resolve_loss(TrainConfig(target="logits", loss="ce"))
    with pytest.raises(ConfigError, match="train.loss='l1' is invalid; valid: ce, kd, feature"):
        TrainConfig(loss="l1")
    # the head's class says which teacher output it reads: a label map reads logits, so it cannot classify an embedding
    with pytest.raises(ConfigError, match="train.head='label_map'.*embedding student.*text, linear"):
        check_head_target("label_map", "embedding")
    check_head_target("text", "embedding")
    with pytest.raises(ConfigError, match="train.views=4.*aug=true"):
        TrainConfig(views=4, aug=False)
    with pytest.raises(ConfigError, match="test split"):
        TrainConfig(train_split="train+test")
    with pytest.raises(ConfigError, match="train.feature_loss='l2'"):
        TrainConfig(feature_loss="l2")


def test_warmup_over_the_whole_run_is_flagged(folder: Path, tmp_path: Path) -> None:
    data, teacher, cfg = _cfgs(folder, tmp_path / "runs", epochs=1, warmup_epochs=1.0)
    with pytest.warns(UserWarning, match=r"warmup_epochs=1.0 covers all train.epochs=1"):
        train(data, teacher, cfg)


def test_cached_targets_gather_mixed_sources_and_views() -> None:
    a = torch.arange(4 * 2 * 3, dtype=torch.float32).reshape(4, 2, 3)  # source a: N=4, K=2 views, C=3
    b = -torch.arange(5 * 2 * 3, dtype=torch.float32).reshape(5, 2, 3)
    provider = CachedTargets({"a": a, "b": b})
    batch = {"source": ["b", "a", "b"], "index": torch.tensor([4, 1, 0]), "view": torch.tensor([1, 0, 1])}
    out = provider(batch, torch.device("cpu"))
    assert torch.equal(out, torch.stack([b[4, 1], a[1, 0], b[0, 1]]))
    with pytest.raises(ConfigError, match="views"):
        provider({"source": ["a"], "index": torch.tensor([0]), "view": torch.tensor([-1])}, torch.device("cpu"))
    with pytest.raises(ConfigError, match="'c'"):
        provider({"source": ["c"], "index": torch.tensor([0])}, torch.device("cpu"))


def test_cached_view_targets_are_read_from_the_shards_not_loaded(tmp_path: Path) -> None:
    """Issue 17: training loaded every cached view ([N, K, D]) into memory. The targets of a batch must be read
    from the memory-mapped shards: numpy's allocations (tracemalloc) stay a batch's, far below the table."""
    import tracemalloc
    from types import SimpleNamespace

    from edgedistill.cache import ShardedArray
    from edgedistill.training.fit import cached_targets

    rng = np.random.default_rng(0)
    shards = [rng.standard_normal((500, 8, 256)).astype(np.float16) for _ in range(4)]  # N=2000, K=8: 8 MB
    for k, a in enumerate(shards):
        storage.save_npy(tmp_path / f"shard_{k}.npy", a)
    table = ShardedArray([storage.load_npy(tmp_path / f"shard_{k}.npy") for k in range(4)])
    cache = SimpleNamespace(embedding=table, logits=None, path=tmp_path)
    head = torch.nn.Linear(256, 10)
    whole = torch.from_numpy(np.concatenate(shards))
    batch = {"source": ["s"] * 64, "index": torch.from_numpy(rng.integers(0, 2000, 64)),
             "view": torch.from_numpy(rng.integers(0, 8, 64))}
    for target, heads, want in [("embedding", None, whole[batch["index"], batch["view"]].float()),
                                ("logits", {"s": head}, None)]:
        tracemalloc.start()
        provider = CachedTargets({"s": cached_targets(cache, target, "embedding")}, heads=heads)
        got = provider(batch, torch.device("cpu"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 256 * 1024, f"{target}: {peak} bytes allocated for a 64-row batch of an 8 MB table"
        if want is None:
            with torch.no_grad():
                want = head(whole[batch["index"], batch["view"]].float())
        torch.testing.assert_close(got, want)


def test_response_kd_step_pulls_student_towards_teacher() -> None:
    torch.manual_seed(0)
    teacher_logits = torch.randn(8, 3) * 5
    module = DistillModule(create_student("test_resnet", 3), TrainConfig(target="logits", temperature=2.0), num_classes=3,
                           targets=CachedTargets({"s": teacher_logits}))
    batch = {"image": torch.randn(8, 3, 16, 16), "label": torch.full((8,), -1), "source": ["s"] * 8,
             "index": torch.arange(8)}
    opt = torch.optim.AdamW(module.student.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        parts = module.compute_loss(batch)
        assert parts["ce"] == 0  # no labels in the batch
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(parts["kd"].item())
    assert losses[-1] < 0.5 * losses[0]


def test_warmup_cosine_schedule() -> None:
    f = warmup_cosine(warmup_steps=4, total_steps=14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.5) and f(14) == pytest.approx(0.0)
    assert warmup_cosine(0, 10, "constant")(7) == 1.0


def test_warmup_and_total_count_the_same_lightning_steps(tmp_path: Path) -> None:
    """Warmup epochs become optimizer steps with Lightning's count (accumulation included), as the total does."""
    import lightning.pytorch as L
    from torch.utils.data import DataLoader

    module = DistillModule(create_student("test_resnet", 3), TrainConfig(lr=0.01, warmup_epochs=1.0), num_classes=3)
    data = [{"image": torch.randn(3, 16, 16), "label": i % 3, "source": "s", "index": i} for i in range(20)]
    trainer = L.Trainer(max_epochs=2, accumulate_grad_batches=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=2))  # 10 batches an epoch, 2 per step
    schedule = trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0]
    assert (schedule.warmup, schedule.total) == (5, 10) == (trainer.global_step // 2, trainer.global_step)


@pytest.mark.slow
def test_ddp_two_cpu_processes(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "edgedistill.cli", "train", "--data.dataset", "imagefolder", "--data.root", str(folder),
           "--data.val_fraction", "0.25", "--train.student", "test_resnet", "--train.image_size", "16",
           "--train.epochs", "1", "--train.batch_size", "3", "--train.num_workers", "0", "--train.devices", "2",
           "--train.accelerator", "cpu", "--train.out_dir", str(out), "--train.name", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EDGEDISTILL_NO_PROGRESS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    m = storage.read_json(out / "ddp" / "metrics.json")
    assert m["finished"] and m["devices"] == 2
    # 18 training images over 2 processes x 3 per batch: 3 steps each, not 6
    assert m["history"][0]["step"] == 3
    assert (out / "ddp" / "student.safetensors").is_file()
