"""Training callbacks: the run's per-epoch record (kept through resumes) and the progress bar.

``RunHistory`` keeps its state in the checkpoints, so a run resumed after SIGKILL still has
every epoch in ``metrics.json``; Lightning's CSV and TensorBoard loggers write the full
step-level logs beside it (one folder per session), and flush only every 100 steps, which a
killed run can lose.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from torch import Tensor

from edgedistill import storage
from edgedistill.console import say


class RunHistory(Callback):
    """Per-epoch history (losses, val acc, lr, time, throughput), saved in checkpoints and metrics.json.

    The entry of an epoch is recorded at the end of validation, before ModelCheckpoint (which
    Lightning runs last) saves, so a resumed run keeps the complete history.
    """

    def __init__(self, metrics_path: Path, summary: dict, has_val: bool, verbose: bool = True) -> None:
        self.metrics_path, self.summary, self.has_val, self.verbose = metrics_path, summary, has_val, verbose
        self.history: list[dict] = []
        self.elapsed_before = 0.0  # training seconds of earlier (killed) sessions
        self._epoch_start = self._session_start = time.perf_counter()
        self._epoch = 0
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
        self._epoch = trainer.current_epoch  # a max_steps stop mid-epoch advances current_epoch before on_train_end

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
            "epoch": self._epoch,
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
            if self.verbose:
                val = f", val acc {100 * entry['val_acc']:.2f}%" if entry["val_acc"] is not None else ""
                loss = f", loss {entry['train_loss']:.4f}" if "train_loss" in entry else ""
                speed = f", {entry['images_per_s']:.0f} img/s" if entry["images_per_s"] else ""
                say(f"  epoch {entry['epoch']}{loss}{val}{speed}")

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
            # epochs trained, not validations: with val_every N the history holds every Nth epoch
            "epochs_completed": self.history[-1]["epoch"] + 1 if self.history else 0,
            "elapsed_s": round(self.elapsed(), 3),
            "images_per_s": round(sum(speeds) / len(speeds), 2) if speeds else None,
            "bad_images": self._bad,
            **self.summary,
            **extra,
            "history": self.history,
        }


class StderrProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar through its public ``init_*_tqdm`` hooks: one line on stderr (stdout stays for
    results), the training bar replaced each epoch, no separate validation bar (the epoch line reports it)."""

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(desc="train", leave=False, dynamic_ncols=True, file=sys.stderr, disable=self.is_disabled,
                    smoothing=0)

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """Only the loss on the bar (the epoch line reports the rest)."""
        metrics = super().get_metrics(trainer, pl_module)
        return {"loss": metrics["train/loss_step"]} if "train/loss_step" in metrics else {}

    def init_test_tqdm(self) -> Tqdm:
        return Tqdm(desc="test", leave=False, dynamic_ncols=True, file=sys.stderr, disable=self.is_disabled)


class TimeBudget(Callback):
    """Fit the run's length to a wall-clock budget: measure the step time, then set the epochs and the schedule.

    After ``measure_steps`` steps (the first ``skip`` are not timed: allocations, caches) the seconds per step give
    the epochs that fit in what is left of ``budget_s``, counted from the start of the fit (earlier sessions of a
    resumed run included); the cosine schedule's length is set to those epochs, so it reaches 0 at the end. At the
    end of each epoch the estimate is redone with the measured epoch time including validation and the
    checkpoint (the mean of the last three after the first). The epochs are a multiple of ``val_every`` (the last
    one is validated), at least ``val_every``.
    What was planned goes into ``summary`` (metrics.json): ``budget_s``, ``budget_epochs``, ``budget_step_s``.
    """

    def __init__(self, budget_s: float, steps_per_epoch: int, val_every: int, history: RunHistory,
                 summary: dict, skip: int = 2, measure_steps: int = 8) -> None:
        self.budget_s, self.steps_per_epoch, self.val_every = budget_s, steps_per_epoch, val_every
        self.history, self.summary = history, summary
        self.skip, self.measure_steps = skip, max(measure_steps, skip + 1)
        self._t_skip: float | None = None
        self._epoch_t0 = 0.0
        self._steps_in_session = 0
        self._epoch_times: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._steps_in_session += 1
        if self._steps_in_session == self.skip:
            self._t_skip = time.perf_counter()
        elif self._steps_in_session == min(self.measure_steps, self.steps_per_epoch) and self._t_skip is not None:
            step_s = (time.perf_counter() - self._t_skip) / (self._steps_in_session - self.skip)
            self._plan(trainer, step_s * self.steps_per_epoch, (batch_idx + 1) / self.steps_per_epoch, step_s)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Re-planned after every epoch with its measured time (validation runs before this hook, so it counts): the
        # first epoch's allocations, or a load that comes and goes on a shared machine, move the end accordingly.
        self._epoch_times.append(time.perf_counter() - self._epoch_t0)
        recent = self._epoch_times[1:][-3:] or self._epoch_times  # the first epoch is slower (allocations)
        self._plan(trainer, sum(recent) / len(recent), 1.0, self.summary.get("budget_step_s"))

    def _plan(self, trainer: L.Trainer, epoch_s: float, done: float, step_s: float | None) -> None:
        """Set the epochs and the schedule's length: the current epoch is ``done`` (a fraction) through."""
        left = self.budget_s - self.history.elapsed() - (1.0 - done) * epoch_s  # after the current epoch ends
        epochs = trainer.current_epoch + 1 + max(int(left / max(epoch_s, 1e-6)), 0)
        epochs = max(epochs // self.val_every * self.val_every, -(-(trainer.current_epoch + 1) // self.val_every)
                     * self.val_every)
        trainer.fit_loop.max_epochs = epochs
        for config in trainer.lr_scheduler_configs:
            for fn in getattr(config.scheduler, "lr_lambdas", []):
                if hasattr(fn, "total"):  # training.module.warmup_cosine
                    fn.total = epochs * self.steps_per_epoch
                    fn.warmup = min(fn.warmup, fn.total // 4)
        self.summary.update(budget_s=self.budget_s, budget_epochs=epochs,
                            budget_step_s=round(step_s, 5) if step_s else None, budget_epoch_s=round(epoch_s, 3))
