"""Train a student with Lightning: from labels, response KD or feature KD; resumable.

A run directory ``<out_dir>/<name>/`` holds::

    config.yaml            the resolved configs (loadable again with --config)
    metrics.json           best val acc and epoch, per-epoch history, elapsed, throughput
                           (rewritten every epoch; "finished": true at the end; test acc if asked)
    student.safetensors    the best student (selected on val accuracy, never test)
    student.json           its manifest: arch, num_outputs, small_input, target, head, view, classes
    head.safetensors/json  the frozen head of an embedding student (heads.save_head)
    checkpoints/           Lightning checkpoints: best-*.ckpt and last.ckpt (every epoch)
    logs/session<k>/       CSV and TensorBoard logs, one folder per (resumed) session

``train.resume=True`` continues from ``checkpoints/last.ckpt`` (epoch, step, optimizer,
schedule and history included).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import Tensor, nn
from torch.utils.data import DataLoader

from edgedistill import storage
from edgedistill.config import DataConfig, TeacherConfig
from edgedistill.data.transforms import CACHED_CROP_SCALE
from edgedistill.errors import ConfigError, DataError
from edgedistill.losses import FEATURE_LOSSES, KD_REDUCTIONS
from edgedistill.module import (
    OPTIMIZERS,
    SCHEDULES,
    TARGETS,
    CachedTargets,
    DistillModule,
    NonFiniteLossError,
    OnlineTargets,
    TargetProvider,
)

TRAIN_HEADS = ("text", "linear", "label_map")
CACHE_AUG_SEED = 0
"""Seed of the K cached augmented views: fixed (the ``edgedistill cache`` default) so runs with
different training seeds share one cache; the training seed still decides which view is drawn."""


DEFAULT_MIN_CROP = CACHED_CROP_SCALE[0]  # the smallest crop of the cached augmented views


@dataclass
class TrainConfig:
    """How a student is trained."""

    student: str = "resnet18"
    """timm model name of the student (``timm.list_models()``)."""
    small_input: bool = False
    """CIFAR-style stem for small images (3x3 stride-1 first conv, no max-pool); ResNets only."""
    pretrained: str | None = None
    """Local ImageNet checkpoint of the student architecture (classifier excluded); None: from scratch."""
    target: str = "labels"
    """What the student learns: labels (cross-entropy), logits (response KD) or embedding (feature KD)."""
    head: str = "linear"
    """Teacher head for KD targets and for classifying an embedding student: text, linear or label_map."""
    head_path: str | None = None
    """A saved head (``heads.save_head``: safetensors + json); required for linear, optional for text."""
    train_split: str = "train"
    """Splits to train on, joined with '+', e.g. ``train+unlabeled``."""
    val_split: str = "val"
    """Split that selects the best checkpoint (validation accuracy); never the test split."""
    image_size: int = 96
    """Student input resolution in pixels."""
    mean: list[float] | None = None
    """Student input normalisation mean (3 values); None: ImageNet's. The tutorial used 0.5."""
    std: list[float] | None = None
    """Student input normalisation std (3 values); None: ImageNet's. The tutorial used 0.25."""
    aug: bool = True
    """Random-resized-crop and horizontal flip on training images; teacher targets follow the same crop."""
    min_crop: float = DEFAULT_MIN_CROP
    """Smallest random-resized-crop area, as a fraction of the image (with cached views: the cache's, 0.35)."""
    views: int | None = None
    """K cached augmented views per image (teacher outputs computed once per view); None: the plain cached view."""
    online_teacher: bool = False
    """Run the teacher on every batch (exact targets under any augmentation, slower) instead of reading the cache."""
    temperature: float = 1.0
    """KD temperature T (response KD); the loss is multiplied by T^2."""
    kd_weight: float = 1.0
    """Weight of the distillation term."""
    ce_weight: float = 0.0
    """Weight of the cross-entropy on labelled images in KD runs (0: distillation only)."""
    feature_loss: str = "mse"
    """Feature-KD distance: mse (raw embeddings), mse_normalized or cosine."""
    kd_reduction: str = "batchmean"
    """KL reduction: batchmean (correct); mean also divides by the class count (the tutorial's, to reproduce it)."""
    head_logit_scale: float | None = None
    """Override the text head's logit scale for teacher logits (1.0: the tutorial's raw cosines); None: the teacher's (~100)."""
    optimizer: str = "sgd"
    """sgd (momentum, Nesterov), adamw, or adam (L2 weight decay, the tutorial's)."""
    lr: float = 0.1
    """Peak learning rate."""
    weight_decay: float = 5e-4
    """Weight decay (not applied to biases and norm parameters)."""
    momentum: float = 0.9
    """SGD momentum."""
    warmup_epochs: float = 1.0
    """Linear warmup length in epochs (fractions allowed), applied per step."""
    schedule: str = "cosine"
    """Learning-rate schedule after warmup: cosine (to 0) or constant."""
    epochs: int = 10
    """Number of epochs."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: no limit); for smoke tests."""
    batch_size: int = 128
    """Images per batch per device."""
    num_workers: int = 2
    """DataLoader worker processes per device."""
    devices: int = 1
    """Number of devices (GPUs, or CPU processes); more than 1 trains with DDP."""
    accelerator: str = "auto"
    """auto (GPU when available), cpu or gpu."""
    precision: str = "auto"
    """Lightning precision; auto: bf16-mixed (or 16-mixed) on GPU, 32-true on CPU (mixed precision is slower there)."""
    seed: int = 0
    """Seed of weights init, data order and augmentation."""
    eval_test: bool = False
    """After training, evaluate the best checkpoint on the test split and record test_acc."""
    out_dir: str = "runs/train"
    """Parent folder of run directories."""
    name: str | None = None
    """Run directory name; None: ``<student>-<target>[-<head>]``."""
    resume: bool = False
    """Continue from ``<run dir>/checkpoints/last.ckpt`` (starts fresh when there is none)."""
    cache_dir: str = "~/.cache/edgedistill"
    """Teacher-output cache root."""

    def __post_init__(self) -> None:
        def bad(flag: str, value: Any, allowed: str) -> ConfigError:
            return ConfigError(f"train.{flag}={value!r} is invalid; {allowed}")

        if self.target not in TARGETS:
            raise bad("target", self.target, f"valid: {', '.join(TARGETS)}")
        if self.head not in TRAIN_HEADS:
            raise bad("head", self.head, f"valid: {', '.join(TRAIN_HEADS)}")
        if self.target == "embedding" and self.head == "label_map":
            raise bad("head", self.head, "an embedding student needs a text or linear head to classify its embedding")
        if self.feature_loss not in FEATURE_LOSSES:
            raise bad("feature_loss", self.feature_loss, f"valid: {', '.join(FEATURE_LOSSES)}")
        if self.kd_reduction not in KD_REDUCTIONS:
            raise bad("kd_reduction", self.kd_reduction, f"valid: {', '.join(KD_REDUCTIONS)}")
        if self.head_logit_scale is not None and (self.head_logit_scale <= 0 or self.head != "text"):
            raise bad("head_logit_scale", self.head_logit_scale, "it must be > 0 and only applies to head=text")
        for flag in ("mean", "std"):
            v = getattr(self, flag)
            if v is not None and (len(v) != 3 or (flag == "std" and min(v) <= 0)):
                raise bad(flag, v, "give 3 values (one per RGB channel; std > 0) or null")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", self.optimizer, f"valid: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", self.schedule, f"valid: {', '.join(SCHEDULES)}")
        for flag in ("image_size", "epochs", "batch_size", "devices"):
            if getattr(self, flag) < 1:
                raise bad(flag, getattr(self, flag), "it must be >= 1")
        if self.views is not None and self.views < 1:
            raise bad("views", self.views, "it must be >= 1 or null")
        if not 0.0 < self.min_crop <= 1.0:
            raise bad("min_crop", self.min_crop, "it must be in (0, 1]")
        if self.views is not None and self.min_crop != DEFAULT_MIN_CROP:
            raise bad("min_crop", self.min_crop, f"cached views were cropped with min_crop={DEFAULT_MIN_CROP}; use it or online_teacher")
        if self.views is not None and not self.aug:
            raise bad("views", self.views, "cached augmented views need aug=true")
        if self.views is not None and self.online_teacher:
            raise bad("views", self.views, "cached views and online_teacher are exclusive; set one")
        if self.temperature <= 0:
            raise bad("temperature", self.temperature, "it must be > 0")
        if self.lr <= 0:
            raise bad("lr", self.lr, "it must be > 0")
        if self.warmup_epochs < 0:
            raise bad("warmup_epochs", self.warmup_epochs, "it must be >= 0")
        if self.num_workers < 0:
            raise bad("num_workers", self.num_workers, "it must be >= 0")
        if self.max_steps == 0 or self.max_steps < -1:
            raise bad("max_steps", self.max_steps, "it must be -1 (no limit) or >= 1")
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda"):
            raise bad("accelerator", self.accelerator, "valid: auto, cpu, gpu, cuda")
        if "test" in [s.strip() for s in self.train_split.split("+")] or self.val_split.strip() == "test":
            raise bad("train_split" if "test" in self.train_split else "val_split", self.train_split,
                      "the test split is for final numbers only (eval_test=true)")

    def run_name(self) -> str:
        """The run directory name: ``name`` or ``<student>-<target>[-<head>]``."""
        if self.name:
            return self.name
        return f"{self.student}-{self.target}" + ("" if self.target == "labels" else f"-{self.head}")


# ----------------------------------------------------------------------------- data


class DistillDataModule(L.LightningDataModule):
    """Train / val / test DataLoaders over ``DataSplits`` (bad images dropped by ``collate_skip_bad``).

    Args:
        splits: The dataset's splits.
        train_split: Spec of the training data (``"train+unlabeled"``).
        val_split: Spec of the validation data, or None for none.
        test_split: Spec of the test data, or None.
        train_transform: ``TrainTransform`` (student crop, optional teacher view, view number).
        eval_transform: Deterministic student transform for val/test.
        batch_size: Images per batch per device.
        num_workers: Worker processes per DataLoader.
    """

    def __init__(self, splits, *, train_split: str, val_split: str | None, test_split: str | None,
                 train_transform, eval_transform, batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.splits, self.train_split, self.val_split, self.test_split = splits, train_split, val_split, test_split
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.batch_size, self.num_workers = batch_size, num_workers

    def _loader(self, spec: str, transform, train: bool) -> DataLoader:
        from edgedistill.data import collate_skip_bad

        ds = self.splits.dataset(spec, transform)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=train,
            # A last batch of a few images gives noisy BatchNorm statistics; drop it when there is more.
            drop_last=train and len(ds) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_skip_bad,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, self.train_transform, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader(self.val_split, self.eval_transform, train=False) if self.val_split else []

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, self.eval_transform, train=False)


# ----------------------------------------------------------------------------- teacher targets


DEFAULT_LABEL_MAPS = {"cifar10": "cifar10", "demo": "cifar10", "stl10": "stl10"}


def _teacher_head(cfg: TrainConfig, teacher: nn.Module, classes: list[str], dataset: str) -> nn.Module:
    """The frozen head that turns teacher outputs (or an embedding student's output) into class logits.

    ``head_path`` names a head saved by ``heads.save_head`` (for label_map it may also be a
    label-map JSON or shipped map name). Without it: text heads are built from the teacher's
    text tower, label maps use the dataset's shipped map; linear probes must be given.
    """
    from edgedistill import heads

    saved = cfg.head_path and Path(cfg.head_path).expanduser().with_suffix("").with_suffix(".safetensors").is_file()
    if saved:
        head = heads.load_head(Path(cfg.head_path).expanduser())
        kind = head.manifest()["kind"]
        if kind != cfg.head:
            raise ConfigError(f"train.head_path={cfg.head_path!r} holds a {kind!r} head but train.head={cfg.head!r}")
    elif cfg.head == "linear":
        raise ConfigError("train.head='linear' needs train.head_path: a probe saved by 'edgedistill teacher' "
                          "(heads.save_head), e.g. runs/teacher/linear_probe")
    elif cfg.head == "text":
        head = heads.build_text_head(teacher, classes)
    else:
        name = cfg.head_path or DEFAULT_LABEL_MAPS.get(dataset)
        if name is None:
            raise ConfigError(f"No shipped label map for dataset {dataset!r}; pass train.head_path=<map.json>")
        head = heads.load_label_map(name, classes)
    if cfg.head_logit_scale is not None:
        head.logit_scale = float(cfg.head_logit_scale)
    n = head.manifest().get("num_classes", len(getattr(head, "groups", classes)))
    if n != len(classes):
        raise ConfigError(f"The {cfg.head} head has {n} classes but dataset {dataset!r} has {len(classes)}")
    return head.requires_grad_(False).eval()


@torch.no_grad()
def _cached_targets(cache, target: str, head: nn.Module | None, head_input: str, chunk: int = 4096) -> Tensor:
    """A source's teacher targets from its cache, in memory: ``[N, (K,) C]`` logits or ``[N, (K,) D]`` embeddings.

    Args:
        cache: ``cache.TeacherCache`` with ``.embedding`` ``[N, (K,) D]`` and ``.logits`` ``[N, (K,) C]``.
        target: ``logits`` (the head is applied, chunk by chunk) or ``embedding`` (returned as is).
        head: Frozen head for ``logits``.
        head_input: Which cached array the head reads: ``embedding`` or ``logits`` (label map).
        chunk: Rows per head call.
    """
    if target == "embedding":
        return torch.from_numpy(np.ascontiguousarray(np.asarray(cache.embedding)))  # float16, as cached
    array = cache.embedding if head_input == "embedding" else cache.logits
    if array is None:
        raise ConfigError(f"The cache at {str(cache.path)!r} has no teacher logits; head=label_map needs a classifier teacher")
    n = len(array)
    out = []
    head = head.float().eval().cpu()
    for start in range(0, n, chunk):
        x = torch.from_numpy(_np_float32(array[start:start + chunk]))  # [n, (K,) D]
        out.append(head(x.flatten(0, -2)).reshape(*x.shape[:-1], -1))
    return torch.cat(out)


def _np_float32(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a), dtype=np.float32)


def _targets(data_cfg: DataConfig, teacher_cfg: TeacherConfig, cfg: TrainConfig, splits
             ) -> tuple[TargetProvider | None, nn.Module | None, dict]:
    """Teacher targets and the student head. Returns (provider, head for the student or None, teacher info)."""
    if cfg.target == "labels":
        return None, None, {}
    from edgedistill.cache import build_teacher

    teacher = build_teacher(teacher_cfg)  # fixed RNG: a random-init teacher (tests) matches its cache in every rank
    head = _teacher_head(cfg, teacher, splits.classes, data_cfg.dataset)
    head_input = "logits" if cfg.head == "label_map" else "embedding"
    info = {"kind": teacher_cfg.kind, "model": teacher_cfg.model, "fingerprint": teacher.fingerprint,
            "embed_dim": int(teacher.embed_dim), "view": teacher.view.to_dict()}
    if cfg.online_teacher:
        out = "embedding" if cfg.target == "embedding" else head_input
        provider: TargetProvider = OnlineTargets(teacher, out, None if cfg.target == "embedding" else head)
    else:
        from edgedistill.cache import ensure_cache

        caches = ensure_cache(data_cfg, teacher_cfg, cfg.train_split, cfg.cache_dir, views=cfg.views or 0,
                              seed=CACHE_AUG_SEED, num_workers=cfg.num_workers, teacher=teacher, splits=splits)
        provider = CachedTargets({k: _cached_targets(c, cfg.target, head, head_input) for k, c in caches.items()})
        info["cache"] = {k: str(c.path) for k, c in caches.items()}
    return provider, (head if cfg.target == "embedding" else None), info


# ----------------------------------------------------------------------------- callbacks


class RunHistory(Callback):
    """Per-epoch history (losses, val acc, lr, time, throughput), saved in checkpoints and metrics.json.

    The entry of an epoch is recorded at the end of validation, before ModelCheckpoint (which
    Lightning runs last) saves, so a resumed run keeps the complete history.
    """

    def __init__(self, metrics_path: Path, summary: dict, has_val: bool) -> None:
        self.metrics_path, self.summary, self.has_val = metrics_path, summary, has_val
        self.history: list[dict] = []
        self.elapsed_before = 0.0  # training seconds of earlier (killed) sessions
        self._epoch_start = self._session_start = time.perf_counter()
        self._train_s = 0.0
        self._images = self._bad = 0
        self._sums: dict[str, float] = {}

    def state_dict(self) -> dict:
        return {"history": self.history, "elapsed_s": self.elapsed()}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
        self.elapsed_before = float(state["elapsed_s"])
        self._session_start = time.perf_counter()

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self._session_start

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._session_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start, self._train_s, self._images, self._sums = time.perf_counter(), 0.0, 0, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch is None:
            return
        b = int(batch["image"].shape[0])
        self._images += b
        self._bad += int(batch.get("n_bad", 0))
        # Epoch means of the loss parts, computed here: Lightning's "_epoch" values only exist
        # after on_train_epoch_end, i.e. after the checkpoint of this epoch is written.
        for k, v in trainer.callback_metrics.items():
            if k.startswith("train/") and k.endswith("_step"):
                name = k.removeprefix("train/").removesuffix("_step")
                self._sums[name] = self._sums.get(name, 0.0) + float(v) * b

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._train_s = time.perf_counter() - self._epoch_start

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.has_val:
            self._train_s = time.perf_counter() - self._epoch_start
            self._record(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A max_steps stop mid-epoch skips validation: still record the partial epoch's training.
        if self._images and (not self.history or self.history[-1]["step"] != trainer.global_step):
            self._train_s = time.perf_counter() - self._epoch_start
            self._record(trainer, validated=False)

    def _record(self, trainer: L.Trainer, validated: bool = True) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if isinstance(v, Tensor) and v.numel() == 1}
        if not validated:  # callback_metrics still hold an earlier epoch's val numbers
            m = {k: v for k, v in m.items() if not k.startswith("val/")}
        images = self._images * trainer.world_size
        entry = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            **{f"train_{k}": v / self._images for k, v in self._sums.items() if self._images},
            "val_acc": m.get("val/acc"),
            "val_loss": m.get("val/loss"),
            "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None,
            "epoch_s": round(self._train_s, 3),
            "images_per_s": round(images / self._train_s, 2) if self._train_s > 0 else None,
        }
        if self.history and self.history[-1]["epoch"] == entry["epoch"]:
            self.history[-1] = entry  # the same epoch validated again (e.g. max_steps stop)
        else:
            self.history.append(entry)
        if trainer.is_global_zero:
            storage.write_json(self.metrics_path, self.metrics(finished=False))

    def metrics(self, finished: bool, **extra: Any) -> dict:
        """The metrics.json content: best val acc and epoch, history, elapsed and throughput."""
        scored = [h for h in self.history if h.get("val_acc") is not None]
        best = max(scored, key=lambda h: h["val_acc"]) if scored else (self.history[-1] if self.history else None)
        speeds = [h["images_per_s"] for h in self.history if h.get("images_per_s")]
        return {
            "finished": finished,
            "best_val_acc": best.get("val_acc") if best else None,
            "best_epoch": best["epoch"] if best else None,
            "best_step": best["step"] if best else None,
            "epochs_completed": len(self.history),
            "elapsed_s": round(self.elapsed(), 3),
            "images_per_s": round(sum(speeds) / len(speeds), 2) if speeds else None,
            "bad_images": self._bad,
            **self.summary,
            **extra,
            "history": self.history,
        }


class StderrProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars, written to stderr (Lightning uses stdout) so stdout stays for results."""

    def _bar(self, desc: str, position: int, leave: bool) -> Tqdm:
        return Tqdm(desc=desc, position=position, disable=self.is_disabled, leave=leave, dynamic_ncols=True,
                    file=sys.stderr, bar_format=self.BAR_FORMAT)

    def init_train_tqdm(self) -> Tqdm:
        return self._bar(self.train_description, 2 * self.process_position, leave=True)

    def init_validation_tqdm(self) -> Tqdm:
        main = self.trainer.state.fn != "validate"
        return self._bar(self.validation_description, 2 * self.process_position + main, leave=not main)

    def init_test_tqdm(self) -> Tqdm:
        return self._bar("Testing", 2 * self.process_position, leave=True)


# ----------------------------------------------------------------------------- the command


def _resolve_hardware(cfg: TrainConfig) -> tuple[str, str, str]:
    """(accelerator, precision, strategy) for Lightning."""
    gpu = torch.cuda.is_available()
    accelerator = cfg.accelerator if cfg.accelerator != "auto" else ("gpu" if gpu else "cpu")
    if accelerator in ("gpu", "cuda") and not gpu:
        raise ConfigError(f"train.accelerator={cfg.accelerator!r} but no CUDA device is available; use auto or cpu")
    precision = cfg.precision
    if precision == "auto":
        # On CPU, bf16 autocast was measured slower than fp32 for these CNNs; fp32 it is.
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if accelerator != "cpu" else "32-true"
    # "ddp" relaunches the command in child processes (works from the CLI; the script must be re-runnable).
    strategy = "ddp" if cfg.devices > 1 else "auto"
    return accelerator, precision, strategy


def _is_rank_zero() -> bool:
    # Before the Trainer exists, child DDP processes know their rank only from the environment.
    return rank_zero_only.rank == 0


def train(data: DataConfig, teacher: TeacherConfig, train: TrainConfig) -> Path:
    """Train a student and write its run directory; returns the run directory.

    Args:
        data: The dataset and its splits.
        teacher: The teacher (unused for ``train.target="labels"``).
        train: How to train.

    Returns:
        The run directory ``<train.out_dir>/<run name>``.

    Raises:
        ConfigError: A bad value, or an existing run without ``resume``.
        NonFiniteLossError: The loss became NaN/inf; the last good checkpoint stays.
    """
    from edgedistill.data import TrainTransform, build_splits, eval_transform, student_view
    from edgedistill.students import count_parameters, create_student

    cfg = train
    run_dir = Path(cfg.out_dir).expanduser().resolve() / cfg.run_name()  # absolute: Lightning reports absolute paths
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resume_from = str(last) if cfg.resume and last.is_file() else None
    if _is_rank_zero():
        if last.is_file() and not cfg.resume:
            raise ConfigError(f"Run directory {str(run_dir)!r} already holds a checkpoint; pass --train.resume true "
                              "to continue it or --train.name to start another run")
        if cfg.resume and resume_from is None:
            print(f"[train] resume: no {last} yet, starting fresh", file=sys.stderr)
        _check_same_config(run_dir, data, teacher, cfg)
        run_dir.mkdir(parents=True, exist_ok=True)
        storage.write_text(run_dir / "config.yaml", yaml.safe_dump(
            {"data": asdict(data), "teacher": asdict(teacher), "train": asdict(cfg)}, sort_keys=False))

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    splits = build_splits(data)
    classes = splits.classes
    val_split = cfg.val_split if _split_size(splits, cfg.val_split) else None
    if val_split is None:
        warnings.warn(f"val split {cfg.val_split!r} is empty: the last epoch's student is kept", stacklevel=2)
    if cfg.eval_test and not _split_size(splits, "test"):
        raise DataError(f"train.eval_test=true but dataset {data.dataset!r} has no test split")
    if not _split_size(splits, cfg.train_split):
        raise DataError(f"train.train_split={cfg.train_split!r} is empty for dataset {data.dataset!r}")

    provider, head, teacher_info = _targets(data, teacher, cfg, splits)
    num_outputs = teacher_info["embed_dim"] if cfg.target == "embedding" else len(classes)
    student = create_student(cfg.student, num_outputs, small_input=cfg.small_input, pretrained=cfg.pretrained)

    sview = student_view(cfg.image_size)
    if cfg.mean is not None or cfg.std is not None:
        sview = dataclasses.replace(sview, mean=tuple(cfg.mean or sview.mean), std=tuple(cfg.std or sview.std))
    if cfg.target != "labels" and cfg.aug and not cfg.online_teacher and cfg.views is None:
        warnings.warn("train.aug=true with cached teacher targets of the plain (uncropped) view: the teacher's target "
                      "describes the whole image, not the student's crop. For exact targets set train.views=K "
                      "(K cached crops) or train.online_teacher=true", stacklevel=2)
    tview = None
    if cfg.online_teacher and cfg.target != "labels":
        tview = _teacher_view(teacher_info)
    train_tf = TrainTransform(sview, aug=cfg.aug, seed=CACHE_AUG_SEED, teacher_view=tview, num_views=cfg.views,
                              scale=(cfg.min_crop, 1.0))
    dm = DistillDataModule(splits, train_split=cfg.train_split, val_split=val_split,
                           test_split="test" if cfg.eval_test else None, train_transform=train_tf,
                           eval_transform=eval_transform(sview), batch_size=cfg.batch_size, num_workers=cfg.num_workers)

    n_train = _split_size(splits, cfg.train_split)
    accelerator, precision, strategy = _resolve_hardware(cfg)
    steps_per_epoch = max(n_train // (cfg.batch_size * cfg.devices), 1)
    if cfg.schedule == "cosine" and cfg.max_steps == -1 and cfg.warmup_epochs >= cfg.epochs:
        warnings.warn(f"train.warmup_epochs={cfg.warmup_epochs} covers all train.epochs={cfg.epochs}: the learning rate "
                      "only rises and the run ends at its peak; set warmup_epochs below epochs (e.g. a quarter)",
                      stacklevel=2)
    module = DistillModule(
        student, target=cfg.target, num_classes=len(classes), head=head, targets=provider,
        temperature=cfg.temperature, kd_weight=cfg.kd_weight, ce_weight=cfg.ce_weight, feature_loss=cfg.feature_loss,
        kd_reduction=cfg.kd_reduction,
        optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch), schedule=cfg.schedule,
    )

    summary = {
        "n_train": n_train,
        "n_unlabeled": _labels_hidden(splits, cfg.train_split),
        "n_val": _split_size(splits, val_split) if val_split else 0,
        "selected_on": f"{val_split}/acc" if val_split else "last epoch (no val split)",
        "targets": _targets_kind(cfg),
        "student_params": count_parameters(student),
        "accelerator": accelerator, "precision": precision, "devices": cfg.devices,
    }
    history = RunHistory(run_dir / "metrics.json", summary, has_val=val_split is not None)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best-epoch{epoch:03d}", auto_insert_metric_name=False,
        monitor="val/acc" if val_split else None, mode="max", save_top_k=1, save_last=True,
    )
    progress = os.environ.get("EDGEDISTILL_NO_PROGRESS") != "1"
    # One log folder per session: Lightning's CSVLogger deletes an existing metrics.csv.
    session = f"session{len(list((run_dir / 'logs').glob('session*')))}" if resume_from else "session0"
    trainer = L.Trainer(
        accelerator=accelerator, devices=cfg.devices, strategy=strategy, precision=precision,
        max_epochs=cfg.epochs, max_steps=cfg.max_steps,
        logger=[CSVLogger(run_dir, name="logs", version=session), TensorBoardLogger(run_dir, name="logs", version=session)],
        callbacks=[history, checkpoint] + ([StderrProgressBar()] if progress else []),
        enable_progress_bar=progress, log_every_n_steps=min(50, steps_per_epoch),
        num_sanity_val_steps=0, enable_model_summary=False, default_root_dir=run_dir,
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # the frozen head, on purpose
            trainer.fit(module, dm, ckpt_path=resume_from)
    except NonFiniteLossError as e:
        kept = f"the last good checkpoint stays at {last}" if last.is_file() else "no checkpoint was saved yet"
        raise NonFiniteLossError(f"{e}; training stopped, {kept}") from None

    best_path = checkpoint.best_model_path or checkpoint.last_model_path or str(last)
    # Taken before trainer.test, which restores the best checkpoint's (older) callback state.
    metrics = history.metrics(finished=True, best_checkpoint=str(Path(best_path).relative_to(run_dir)))
    if cfg.eval_test:
        # The test split is read once, with the checkpoint already chosen on val.
        res = trainer.test(module, datamodule=dm, ckpt_path=best_path, verbose=False)
        metrics["test_acc"] = float(res[0]["test/acc"])
    if trainer.is_global_zero:
        _save_student(run_dir, best_path, cfg, num_outputs, head, sview, classes, teacher_info)
        storage.write_json(run_dir / "metrics.json", metrics)
    return run_dir


_train = train  # train_command's parameter named "train" (the --train.X flags) shadows the function


def _teacher_view(info: dict):
    from edgedistill.data import ViewSpec

    return ViewSpec(**info["view"])


def _targets_kind(cfg: TrainConfig) -> str:
    if cfg.target == "labels":
        return "labels"
    if cfg.online_teacher:
        return "online teacher (same crop)" if cfg.aug else "online teacher"
    if cfg.views:
        return f"cached, {cfg.views} augmented views"
    return "cached plain view" + (" (approximate under aug)" if cfg.aug else "")


def _split_size(splits, spec: str | None) -> int:
    if not spec:
        return 0
    try:
        return sum(len(p.indices) for name in spec.split("+") for p in splits.parts.get(name.strip(), []))
    except AttributeError:
        return 0


def _labels_hidden(splits, spec: str) -> int:
    return sum(len(p.indices) for name in spec.split("+") for p in splits.parts.get(name.strip(), []) if not p.labeled)


def config_diffs(run_dir: Path, data: DataConfig, teacher: TeacherConfig, cfg: TrainConfig) -> list[str]:
    """Settings that differ from those recorded in ``run_dir/config.yaml`` (``section.key: old -> new``)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return []
    old = yaml.safe_load(path.read_text())
    new = {"data": asdict(data), "teacher": asdict(teacher), "train": asdict(cfg)}
    ignore = {"resume", "num_workers", "epochs", "max_steps", "out_dir", "cache_dir", "head_path"}
    return [f"{sec}.{k}: {old.get(sec, {}).get(k)!r} -> {v!r}" for sec, d in new.items() for k, v in d.items()
            if old.get(sec, {}).get(k) != v and k not in ignore and not isinstance(v, (list, tuple))]


def _check_same_config(run_dir: Path, data: DataConfig, teacher: TeacherConfig, cfg: TrainConfig) -> None:
    """Warn when a resumed run's configs differ from those recorded (the run would mix two setups)."""
    diffs = config_diffs(run_dir, data, teacher, cfg) if cfg.resume else []
    if diffs:
        warnings.warn(f"Resuming {str(run_dir)!r} with changed settings: {'; '.join(diffs)}", stacklevel=3)


def _save_student(run_dir: Path, ckpt_path: str, cfg: TrainConfig, num_outputs: int, head: nn.Module | None,
                  view, classes: list[str], teacher_info: dict) -> None:
    """The best student as ``student.safetensors`` + ``student.json`` (+ the head of an embedding student)."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    weights = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
    storage.save_safetensors(run_dir / "student.safetensors", weights, metadata={"arch": cfg.student})
    if head is not None:
        from edgedistill import heads

        heads.save_head(head, run_dir / "head")
    manifest = {
        "arch": cfg.student,
        "num_outputs": num_outputs,
        "small_input": cfg.small_input,
        "target": cfg.target,
        "head": {"kind": cfg.head, "path": cfg.head_path, "saved": head is not None} if cfg.target != "labels" else None,
        "view": view.to_dict(),
        "class_names": list(classes),
        "teacher": {k: v for k, v in teacher_info.items() if k != "cache"} or None,
        "checkpoint": str(Path(ckpt_path).relative_to(run_dir)),
    }
    storage.write_json(run_dir / "student.json", manifest)


def train_command(
    data: DataConfig = DataConfig(),
    teacher: TeacherConfig = TeacherConfig(),
    train: TrainConfig = TrainConfig(),
) -> None:
    """Train a student: from labels, response KD or feature KD.

    Args:
        data: The dataset and its splits.
        teacher: The teacher (for KD targets).
        train: How to train.
    """
    run_dir = _train(data, teacher, train)
    if _is_rank_zero():
        m = storage.read_json(run_dir / "metrics.json")
        acc = m.get("best_val_acc")
        test = f", test acc {100 * m['test_acc']:.2f}%" if "test_acc" in m else ""
        best = f"best val acc {100 * acc:.2f}% (epoch {m['best_epoch']})" if acc is not None else "no val split"
        print(f"{run_dir}: {best}{test}, {m['elapsed_s']:.0f}s")


__all__ = ["TrainConfig", "DistillDataModule", "RunHistory", "train", "train_command"]
