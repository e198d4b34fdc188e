"""Train a student with Lightning: from labels, response KD or feature KD; resumable, safe to rerun.

A run directory ``<out_dir>/<name>/`` holds::

    config.yaml            the resolved configs (loadable again with --config); written once they are checked
    metrics.json           best val acc and epoch, per-epoch history, elapsed, throughput
                           (rewritten every epoch; "finished": true at the end; test acc if asked)
    student.safetensors    the best student (selected on val accuracy, never test)
    student.json           its manifest (``students.StudentManifest``)
    head.safetensors/json  the frozen head of an embedding student (``heads.save_head``)
    checkpoints/           Lightning checkpoints (atomic): best-*.ckpt and last.ckpt (every epoch)
    logs/session<k>/       CSV and TensorBoard logs, one folder per (resumed) session; lightning.log

Training runs in three steps: :func:`build_run` checks every setting and builds data,
targets, student and Lightning module (nothing in the run directory is written until it
succeeds); :func:`fit_run` trains; :func:`finalize_run` writes the best student and metrics.
``train.resume=True`` continues from ``checkpoints/last.ckpt`` (or the newest checkpoint that
loads); checkpoints are loaded as plain data only (``training.checkpoints``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn

from edgedistill import storage
from edgedistill.cache import ensure_cache, pixel_cache
from edgedistill.config import RECORD_IGNORED, DataConfig, TeacherConfig, TrainConfig
from edgedistill.console import progress_enabled, say, warn_once
from edgedistill.data.splits import build_splits
from edgedistill.data.transforms import BatchAugment, TrainTransform, eval_transform
from edgedistill.data.views import ViewSpec, student_view
from edgedistill.errors import ConfigError, DataError
from edgedistill.heads import build_head, check_head_target, head_class, save_head
from edgedistill.losses import resolve_loss
from edgedistill.students import StudentManifest, count_parameters, create_student
from edgedistill.teachers import create_teacher
from edgedistill.training.callbacks import RunHistory, StderrProgressBar, TimeBudget
from edgedistill.training.checkpoints import SafeCheckpointIO, confined, load_checkpoint, resume_checkpoint
from edgedistill.training.datamodule import DistillDataModule
from edgedistill.training.module import CachedTargets, DistillModule, NonFiniteLossError, OnlineTargets, TargetProvider
from edgedistill.training.record import CHECKPOINTS, config_diffs, has_checkpoint, write_run_config

CACHE_AUG_SEED = 0
"""Seed of the K cached augmented views: fixed (the ``edgedistill cache`` default) so runs with
different training seeds share one cache; the training seed still decides which view is drawn."""


# ----------------------------------------------------------------------------- teacher targets


@torch.no_grad()
def cached_targets(cache, target: str, head_input: str):
    """A source's teacher-target table in its cache: ``[N, (K,) C]`` logits or ``[N, (K,) D]`` embeddings.

    The cache's memory-mapped ``ShardedArray`` itself (its shards were checksummed when the cache was
    opened): :class:`CachedTargets` reads a batch's rows from it, so no table is loaded into memory.

    Args:
        cache: ``cache.TeacherCache`` with ``.embedding`` ``[N, (K,) D]`` and ``.logits`` ``[N, (K,) C]``.
        target: ``logits`` (the array the head reads) or ``embedding``.
        head_input: Which cached array the head reads (its class's ``reads``): ``embedding`` or ``logits``.
    """
    if target == "embedding":
        return cache.embedding
    array = cache.embedding if head_input == "embedding" else cache.logits
    if array is None:
        raise ConfigError(f"The cache at {str(cache.path)!r} has no teacher logits, which the head reads; it needs a "
                          "classifier teacher")
    return array


@dataclass
class Targets:
    """What the teacher contributes to a run: the target provider, the head of an embedding student, a record."""

    provider: TargetProvider | None
    student_head: nn.Module | None
    info: dict[str, Any]


def build_targets(data_cfg: DataConfig, teacher_cfg: TeacherConfig, cfg: TrainConfig, splits) -> Targets:
    """Teacher targets (cached or online) for ``cfg.target``, and the head an embedding student is classified by."""
    if cfg.target == "labels":
        return Targets(None, None, {})
    check_head_target(cfg.head, cfg.target)
    cls = head_class(cfg.head)
    teacher = create_teacher(teacher_cfg, cfg.cache_dir)
    # head_path: a saved head, or (for a head with its own source, e.g. label_map) that source
    saved = cfg.head_path if getattr(cls, "source", None) is None or _is_saved_head(cfg.head_path) else None
    source = cfg.head_path if saved is None else None
    head = build_head(cfg.head, classes=splits.classes, dataset=data_cfg.dataset, teacher=teacher, saved=saved,
                      label_map=source)
    if cfg.head_logit_scale is not None:
        head.logit_scale = float(cfg.head_logit_scale)
    head_input = cls.reads
    info = {"kind": teacher_cfg.kind, "model": teacher_cfg.model, "pretrained": teacher_cfg.pretrained,
            "image_size": teacher_cfg.image_size, "fingerprint": teacher.fingerprint,
            "embed_dim": int(teacher.embed_dim), "view": teacher.view.to_dict()}
    if cfg.online_teacher:
        out = "embedding" if cfg.target == "embedding" else head_input
        provider: TargetProvider = OnlineTargets(teacher, out, None if cfg.target == "embedding" else head)
    else:
        caches = ensure_cache(data_cfg, teacher_cfg, cfg.train_split, cfg.cache_dir, views=cfg.views or 0,
                              seed=CACHE_AUG_SEED, num_workers=cfg.num_workers, teacher=teacher, splits=splits)
        provider = CachedTargets({k: cached_targets(c, cfg.target, head_input) for k, c in caches.items()},
                                 heads=None if cfg.target == "embedding" else {k: head for k in caches})
        info["cache"] = {k: str(c.path) for k, c in caches.items()}
    return Targets(provider, head if cfg.target == "embedding" else None, info)


def _is_saved_head(path: str | None) -> bool:
    return bool(path) and Path(path).expanduser().with_suffix("").with_suffix(".json").is_file() and \
        Path(path).expanduser().with_suffix("").with_suffix(".safetensors").is_file()


def _targets_kind(cfg: TrainConfig) -> str:
    if cfg.target == "labels":
        return "labels"
    if cfg.online_teacher:
        return "online teacher (same crop)" if cfg.aug else "online teacher"
    if cfg.views:
        return f"cached, {cfg.views} augmented views"
    return "cached plain view" + (" (approximate under aug)" if cfg.aug else "")


# ----------------------------------------------------------------------------- the run's record


# ----------------------------------------------------------------------------- build, fit, finalize


@dataclass
class RunSetup:
    """Everything :func:`build_run` made, for :func:`fit_run` and :func:`finalize_run`."""

    data: DataConfig
    teacher: TeacherConfig
    cfg: TrainConfig
    run_dir: Path
    resume_from: Path | None
    splits: Any
    val_split: str | None
    targets: Targets
    num_outputs: int
    view: Any
    datamodule: DistillDataModule
    module: DistillModule
    summary: dict[str, Any]
    steps_per_epoch: int


BUDGET_PROVISIONAL_EPOCHS = 1000
"""Epochs a budgeted run starts with, until :class:`TimeBudget` has measured the step time (a few steps)."""


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
    strategy = "ddp" if cfg.devices > 1 or cfg.num_nodes > 1 else "auto"
    return accelerator, precision, strategy


def _check_resume(run_dir: Path, data: DataConfig, teacher: TeacherConfig, cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from; refuses an existing run without ``resume`` or resumed with other settings."""
    ckpt_dir = run_dir / CHECKPOINTS
    has_ckpt = has_checkpoint(run_dir)
    if has_ckpt and not cfg.resume:
        raise ConfigError(f"Run directory {str(run_dir)!r} already holds a checkpoint; pass --train.resume true "
                          "to continue it or --train.name to start another run")
    diffs = config_diffs(run_dir, data, teacher, cfg, ignore=RECORD_IGNORED + ("epochs", "max_steps", "budget_s")) if cfg.resume else []
    if diffs:
        raise ConfigError(f"Cannot resume {str(run_dir)!r} with other settings ({'; '.join(diffs)}); use the recorded "
                          "ones (config.yaml) or another --train.name")
    if not cfg.resume:
        return None
    found = resume_checkpoint(ckpt_dir) if has_ckpt else None
    if found is None and rank_zero_only.rank == 0:
        say(f"[train] resume: no checkpoint in {ckpt_dir} yet, starting fresh")
    return found


def build_run(data: DataConfig, teacher: TeacherConfig, cfg: TrainConfig) -> RunSetup:
    """Check every setting and build data, targets, student and module; writes nothing in the run directory.

    Raises:
        ConfigError / DataError: a bad value, an existing run without ``resume``, a resume with other settings.
    """
    resolve_loss(cfg)  # the loss trains this target: refused before anything else
    if cfg.target != "labels":
        check_head_target(cfg.head, cfg.target)
    cfg = cfg.resolved()  # what a planner left open: the plain defaults (distill fills them before)
    run_dir = Path(cfg.out_dir).expanduser().resolve() / cfg.run_name()  # absolute: Lightning reports absolute paths
    resume_from = _check_resume(run_dir, data, teacher, cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    splits = build_splits(data)
    val_split = cfg.val_split if splits.size(cfg.val_split) else None
    if val_split is None:
        warn_once(f"val split {cfg.val_split!r} is empty: the last epoch's student is kept")
    if cfg.eval_test and not splits.size("test"):
        raise DataError(f"train.eval_test=true but dataset {data.dataset!r} has no test split")
    n_train = splits.size(cfg.train_split)
    if not n_train:
        raise DataError(f"train.train_split={cfg.train_split!r} is empty for dataset {data.dataset!r}")
    if cfg.target != "labels" and cfg.aug and not cfg.online_teacher and cfg.views is None and cfg.min_crop < 1.0 \
            and not cfg.pad_crop:
        warn_once("train.aug=true with cached teacher targets of the plain (uncropped) view: the teacher's target "
                  "describes the whole image, not the student's crop. For exact targets set train.views=K "
                  "(K cached crops) or train.online_teacher=true")
    # only the logging cadence (Lightning needs it before its loaders exist); the schedule counts Lightning's steps
    steps_per_epoch = max(n_train // (cfg.batch_size * cfg.devices * cfg.num_nodes), 1)
    if cfg.schedule == "cosine" and cfg.max_steps == -1 and cfg.epochs is not None and cfg.warmup_epochs >= cfg.epochs:
        warn_once(f"train.warmup_epochs={cfg.warmup_epochs} covers all train.epochs={cfg.epochs}: the learning rate "
                  "only rises and the run ends at its peak; set warmup_epochs below epochs (e.g. a quarter)")

    targets = build_targets(data, teacher, cfg, splits)
    num_outputs = targets.info["embed_dim"] if cfg.target == "embedding" else len(splits.classes)
    student = create_student(cfg.student, num_outputs, small_input=cfg.small_input, pretrained=cfg.pretrained,
                             kwargs=cfg.student_kwargs)
    sview = student_view(cfg.image_size, tuple(cfg.mean) if cfg.mean else None, tuple(cfg.std) if cfg.std else None)
    tview = None
    if cfg.online_teacher and cfg.target != "labels":
        tview = ViewSpec(**targets.info["view"])
    train_tf = TrainTransform(sview, aug=cfg.aug, seed=CACHE_AUG_SEED, teacher_view=tview, num_views=cfg.views,
                              scale=(cfg.min_crop, 1.0))
    pixels = None
    if cfg.pixel_cache and tview is None:  # the online teacher needs each crop at its own resolution: images path
        specs = [cfg.train_split] + ([val_split] if val_split else []) + (["test"] if cfg.eval_test else [])
        keys = dict.fromkeys(k for spec in specs for k in splits.sources_of(spec))
        pixels = {k: pixel_cache(splits.sources[k], sview, cfg.cache_dir) for k in keys}
    dm = DistillDataModule(splits, train_split=cfg.train_split, val_split=val_split,
                           test_split="test" if cfg.eval_test else None, train_transform=train_tf,
                           eval_transform=eval_transform(sview), batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                           pixel_caches=pixels, views=cfg.views, views_seed=CACHE_AUG_SEED, seed=cfg.seed)
    module = DistillModule(
        student, cfg, num_classes=len(splits.classes), head=targets.student_head, targets=targets.provider,
        batch_augment=BatchAugment(sview, scale=(cfg.min_crop, 1.0), pad=cfg.pad_crop) if pixels else None,
    )
    if resume_from is not None:  # the checkpoint must fit this student before anything is written
        state = load_checkpoint(resume_from)["state_dict"]
        own = module.state_dict()
        misfit = [k for k, v in state.items() if k in own and own[k].shape != v.shape] + [k for k in own if k not in state]
        if misfit:
            raise ConfigError(f"Checkpoint {resume_from} does not fit this student ({len(misfit)} tensors differ, "
                              f"e.g. {misfit[0]}); resume with the recorded settings or start another run")
    accelerator, precision, _ = _resolve_hardware(cfg)
    summary = {
        "n_train": n_train, "n_unlabeled": splits.hidden(cfg.train_split),
        "n_val": splits.size(val_split), "selected_on": f"{val_split}/acc" if val_split else "last epoch (no val split)",
        "targets": _targets_kind(cfg), "student_params": count_parameters(student),
        "input": "pixels decoded once, batches augmented as tensors" if pixels else "images decoded per item",
        "accelerator": accelerator, "precision": precision, "devices": cfg.devices, "num_nodes": cfg.num_nodes,
        "student": cfg.student, "student_kwargs": dict(cfg.student_kwargs), "image_size": cfg.image_size,
    }
    return RunSetup(data, teacher, cfg, run_dir, resume_from, splits, val_split, targets, num_outputs, sview, dm,
                    module, summary, steps_per_epoch)


@contextlib.contextmanager
def lightning_quiet(log_file: Path) -> Iterator[None]:
    """Send Lightning's info lines, tips and warnings to ``log_file`` instead of the terminal."""
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    except OSError as e:
        raise storage.StorageError(f"Cannot write {log_file}: {e.strerror}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    saved = [(lg, list(lg.handlers), lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers = [handler]
        lg.propagate = False
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if f"{os.sep}lightning{os.sep}" in filename or f"{os.sep}torch{os.sep}" in filename:
            handler.stream.write(warnings.formatwarning(message, category, filename, lineno, line))
        else:
            shown(message, category, filename, lineno, file, line)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # the frozen head, on purpose
            yield
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
        handler.close()


@dataclass
class FitResult:
    """What :func:`fit_run` leaves for :func:`finalize_run`."""

    trainer: L.Trainer
    history: RunHistory
    checkpoint: ModelCheckpoint


def fit_run(setup: RunSetup) -> FitResult:
    """Train (resuming when asked); call inside :func:`lightning_quiet`."""
    cfg, run_dir = setup.cfg, setup.run_dir
    ckpt_dir = run_dir / "checkpoints"
    accelerator, precision, strategy = _resolve_hardware(cfg)
    history = RunHistory(run_dir / "metrics.json", setup.summary, has_val=setup.val_split is not None)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best-epoch{epoch:03d}", auto_insert_metric_name=False,
        monitor="val/acc" if setup.val_split else None, mode="max", save_top_k=1, save_last=True,
        every_n_epochs=cfg.val_every,
    )
    # One log folder per session: Lightning's CSVLogger deletes an existing metrics.csv.
    session = f"session{len(list((run_dir / 'logs').glob('session*')))}" if setup.resume_from else "session0"
    show = progress_enabled()
    budget = []
    if cfg.epochs is None:  # the epochs come from the budget, once the step time is measured
        budget = [TimeBudget(cfg.budget_s, setup.steps_per_epoch, cfg.val_every, history, setup.summary)]
    trainer = L.Trainer(
        accelerator=accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=strategy, precision=precision,
        max_epochs=cfg.epochs or BUDGET_PROVISIONAL_EPOCHS, max_steps=cfg.max_steps, plugins=[SafeCheckpointIO()],
        check_val_every_n_epoch=cfg.val_every,
        logger=[CSVLogger(run_dir, name="logs", version=session), TensorBoardLogger(run_dir, name="logs", version=session)],
        callbacks=[history, checkpoint] + budget + ([StderrProgressBar()] if show else []),
        enable_progress_bar=show, log_every_n_steps=min(50, setup.steps_per_epoch),
        num_sanity_val_steps=0, enable_model_summary=False, default_root_dir=run_dir,
    )
    try:
        trainer.fit(setup.module, setup.datamodule, ckpt_path=str(setup.resume_from) if setup.resume_from else None,
                    weights_only=True)
    except NonFiniteLossError as e:
        last = ckpt_dir / "last.ckpt"
        kept = f"the last good checkpoint stays at {last}" if last.is_file() else "no checkpoint was saved yet"
        raise NonFiniteLossError(f"{e}; training stopped, {kept}") from None
    return FitResult(trainer, history, checkpoint)


def finalize_run(setup: RunSetup, fit: FitResult) -> Path:
    """Write the best student (``student.safetensors`` + ``student.json``) and ``metrics.json``; returns the run dir."""
    cfg, run_dir, trainer, history, checkpoint = setup.cfg, setup.run_dir, fit.trainer, fit.history, fit.checkpoint
    ckpt_dir = run_dir / "checkpoints"
    best = (confined(checkpoint.best_model_path, ckpt_dir) or confined(checkpoint.last_model_path, ckpt_dir)
            or confined(ckpt_dir / "last.ckpt", ckpt_dir))
    if best is None:
        raise DataError(f"Training of {str(run_dir)!r} left no checkpoint to take the student from")
    # Taken before trainer.test, which restores the best checkpoint's (older) callback state.
    metrics = history.metrics(finished=True, best_checkpoint=str(best.relative_to(run_dir)))
    if cfg.eval_test:
        # The test split is read once, with the checkpoint already chosen on val.
        res = trainer.test(setup.module, datamodule=setup.datamodule, ckpt_path=str(best), verbose=False,
                           weights_only=True)
        metrics["test_acc"] = float(res[0]["test/acc"])
    if trainer.is_global_zero:
        state = load_checkpoint(best)["state_dict"]
        weights = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
        storage.save_safetensors(run_dir / "student.safetensors", weights, metadata={"arch": cfg.student})
        head = setup.targets.student_head
        if head is not None:
            save_head(head, run_dir / "head")
        StudentManifest(
            arch=cfg.student, num_outputs=setup.num_outputs, class_names=list(setup.splits.classes),
            view=setup.view.to_dict(), target=cfg.target, small_input=cfg.small_input, kwargs=dict(cfg.student_kwargs),
            head={"kind": cfg.head, "path": cfg.head_path, "saved": head is not None} if cfg.target != "labels" else None,
            teacher={k: v for k, v in setup.targets.info.items() if k != "cache"} or None,
            checkpoint=str(best.relative_to(run_dir)),
        ).save(run_dir / "student.json")
        storage.write_json(run_dir / "metrics.json", metrics)
    return run_dir


def train(data: DataConfig, teacher: TeacherConfig, train: TrainConfig) -> Path:
    """Train a student and write its run directory; returns the run directory.

    Raises:
        ConfigError: A bad value, an existing run without ``resume``, or a resume with other settings.
        NonFiniteLossError: The loss became NaN/inf; the last good checkpoint stays.
    """
    setup = build_run(data, teacher, train)
    if rank_zero_only.rank == 0:  # the run's record, written once every setting is known good (and the folder writable)
        write_run_config(setup.run_dir, data, teacher, setup.cfg)
    with lightning_quiet(setup.run_dir / "logs" / "lightning.log"):
        return finalize_run(setup, fit_run(setup))


_train = train  # train_command's parameter named "train" (the --train.X flags) shadows the function


def train_command(
    data: DataConfig = DataConfig(),
    teacher: TeacherConfig = TeacherConfig(),
    train: TrainConfig = TrainConfig(),
    plugins: list[str] | None = None,
) -> None:
    """Train a student: from labels, response KD or feature KD.

    Args:
        data: The dataset and its splits.
        teacher: The teacher (for KD targets).
        train: How to train.
        plugins: Modules (names or .py paths) imported first: they register teachers, heads, losses, ... (registry).
    """
    run_dir = _train(data, teacher, train)
    if rank_zero_only.rank == 0:
        m = storage.read_json(run_dir / "metrics.json")
        acc = m.get("best_val_acc")
        test = f", test acc {100 * m['test_acc']:.2f}%" if "test_acc" in m else ""
        if acc is not None:
            best = f"best val acc {100 * acc:.2f}% (epoch {m['best_epoch']})"
        elif m.get("n_val"):
            best = f"no validation ran (stopped at step {m.get('best_step')} before the first one)"
        else:
            best = "no val split"
        print(f"{run_dir}: {best}{test}, {m['elapsed_s']:.0f}s")
