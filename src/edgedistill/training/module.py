"""The LightningModule that trains a student: from labels, response KD or feature KD.

Teacher targets come from a *target provider*, called with the batch:

* :class:`CachedTargets`: per-source tables ``[N, C|D]`` (or ``[N, K, C|D]`` for K cached
  augmented views) of the teacher-output cache, read through its memory maps a batch at a time; the fast path.
* :class:`OnlineTargets`: the frozen teacher runs on ``batch["teacher_image"]`` (the same
  crop as the student's, at the teacher's view) under ``inference_mode``; exact under any
  augmentation.

Neither provider is a registered submodule: the teacher (hundreds of MB) must stay out of
the student's checkpoints and out of DDP's gradient buckets.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import lightning.pytorch as L
import torch
from timm.optim import create_optimizer_v2
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from edgedistill.config import TrainConfig
from edgedistill.errors import ConfigError, EdgeDistillError
from edgedistill.losses import IGNORE_INDEX, StudentOutputs, cross_entropy, resolve_loss


class NonFiniteLossError(EdgeDistillError):
    """The training loss became NaN or infinite (learning rate too high, fp16 overflow, ...)."""


class TargetProvider(Protocol):
    """Gives the teacher's target for a batch: logits ``[B, C]`` or embeddings ``[B, D]``."""

    def __call__(self, batch: dict[str, Any], device: torch.device) -> Tensor: ...


class CachedTargets:
    """Teacher targets gathered, a batch at a time, from per-source tables.

    Args:
        tables: ``{source key: [N, C|D]}``, or ``[N, K, C|D]`` when the cache holds K augmented views
            (then the batch must carry ``"view"``, the view each image shows). Rows are indexed by the
            image's source-local index. A table is a ``Tensor`` or the cache's memory-mapped
            ``cache.ShardedArray``: then only the batch's rows (and views) are read from disk, so
            training holds no table in memory, however many images and views the cache has.
        heads: ``{source key: frozen head}`` applied to the gathered rows (e.g. a linear probe turning
            cached embeddings into class logits); a source without one gives its rows as they are.
    """

    def __init__(self, tables: dict[str, Any], heads: dict[str, nn.Module] | None = None) -> None:
        # Kept in their own dtype (float16 from the cache); rows become float32 as they are gathered.
        self.tables = dict(tables)
        self.heads = {k: h.float().eval().cpu() for k, h in (heads or {}).items()}

    def __call__(self, batch: dict[str, Any], device: torch.device) -> Tensor:
        sources: list[str] = list(batch["source"])
        index = torch.as_tensor(batch["index"]).cpu()
        view = batch.get("view")
        view = torch.as_tensor(view).cpu() if view is not None else None
        parts: dict[str, tuple[Tensor, Tensor]] = {}
        for src in dict.fromkeys(sources):  # train+unlabeled batches mix sources
            mask = torch.tensor([s == src for s in sources])
            table = self._table(src)
            rows, v = index[mask], None
            if table.ndim == 3:
                v = view[mask] if view is not None else None
                if v is None or bool((v < 0).any()):
                    raise ConfigError(
                        f"The cache of {src!r} holds {table.shape[1]} augmented views but the batch has no view "
                        "number; train with aug=true and views=K matching the cache"
                    )
            if isinstance(table, Tensor):
                got = (table[rows] if v is None else table[rows, v]).float()
            else:  # memory-mapped shards: read just these rows (and views)
                got = torch.from_numpy(table.take(rows.numpy(), None if v is None else v.numpy())).float()
            if src in self.heads:
                with torch.no_grad():  # not inference_mode: the targets enter the loss's autograd graph
                    got = self.heads[src](got)
            parts[src] = (mask, got)
        first = next(iter(parts.values()))[1]
        out = torch.empty((len(sources), first.shape[-1]), dtype=torch.float32)
        for mask, got in parts.values():
            out[mask] = got
        return out.to(device, non_blocking=True)

    def _table(self, src: str) -> Any:
        if src not in self.tables:
            raise ConfigError(f"No cached teacher targets for source {src!r}; cached: {', '.join(self.tables)}")
        return self.tables[src]


class OnlineTargets:
    """Teacher targets computed on the fly from ``batch["teacher_image"]``.

    Args:
        teacher: Frozen teacher; ``teacher(x) -> {"embedding": [B, D], "logits": [B, C]}``.
        output: Which teacher output to use: ``embedding`` or ``logits``.
        head: Optional frozen head applied to that output (``TextHead`` / ``LinearProbe`` on
            the embedding, ``LabelMapHead`` on ImageNet logits) to give class logits.
    """

    def __init__(self, teacher: nn.Module, output: str = "embedding", head: nn.Module | None = None) -> None:
        self.teacher, self.output, self.head = teacher.eval(), output, head
        self._device: torch.device | None = None

    def __call__(self, batch: dict[str, Any], device: torch.device) -> Tensor:
        if "teacher_image" not in batch:
            raise ConfigError("online_teacher=True needs batches with 'teacher_image' (TrainTransform with a teacher view)")
        if self._device != device:  # moved lazily: the teacher is not a submodule (see module docstring)
            self.teacher.to(device)
            if self.head is not None:
                self.head.to(device)
            self._device = device
        with torch.inference_mode():
            out = self.teacher(batch["teacher_image"].to(device))[self.output]
            if self.head is not None:
                out = self.head(out)
        return out.float().clone()  # clone: inference tensors cannot enter autograd graphs


class DistillModule(L.LightningModule):
    """Student + frozen head + loss + accuracy + optimizer and schedule.

    Args:
        student: The network being trained; ``student(x [B, 3, H, W]) -> [B, C]`` (logits)
            or ``[B, D]`` (embedding, when ``cfg.target="embedding"``).
        cfg: The run's training config: target, loss (``registry.LOSSES``) and its weights, optimizer and schedule,
            augmentation, seed and layout are read from it.
        num_classes: Number of classes of the task (for accuracy).
        head: Frozen head turning a student embedding into class logits; required for
            ``target="embedding"``. Saved in checkpoints with the student (it is small).
        targets: Target provider; required unless ``target="labels"``.
        batch_augment: ``data.transforms.BatchAugment`` for batches of decoded ``pixels`` (the pixels
            input path): crops, flips and normalises them on the device after transfer. Crops of step ``s`` of rank
            ``r`` are drawn from ``cfg.seed``, so a resumed run trains on exactly the batches an uninterrupted one would.
    """

    def __init__(
        self,
        student: nn.Module,
        cfg: TrainConfig,
        *,
        num_classes: int,
        head: nn.Module | None = None,
        targets: TargetProvider | None = None,
        batch_augment: nn.Module | None = None,
    ) -> None:
        super().__init__()
        # Values are validated once, by TrainConfig; these are the module's own wiring invariants.
        target = cfg.target
        if target == "embedding" and head is None:
            raise ConfigError("target='embedding' needs a head (text or linear) to classify the student's embedding")
        if target != "labels" and targets is None:
            raise ConfigError(f"target={target!r} needs teacher targets (a cache or the online teacher)")
        self.student = student
        self.head = head
        if head is not None:
            head.requires_grad_(False).eval()
        self.targets = targets
        self.cfg, self.target, self.num_classes = cfg, target, num_classes
        self.loss_name, self.loss_fn = resolve_loss(cfg)
        self.batch_augment, self.aug, self.seed, self.channels_last = batch_augment, cfg.aug, cfg.seed, cfg.channels_last
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)

    def configure_model(self) -> None:
        """NHWC weights when asked, set as fit starts (before DDP and the optimizer see them), so a student swapped in
        after construction (``optimize`` wraps the trained one) gets the layout its batches come in."""
        if self.channels_last:
            self.student.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        if self.head is not None:
            self.head.eval()  # frozen: never update e.g. BatchNorm statistics of a head
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``[B, C]`` for images ``x [B, 3, H, W]`` (through the head for embedding students)."""
        out = self.student(x)
        return self.head(out) if self.target == "embedding" else out

    def on_after_batch_transfer(self, batch: dict[str, Any] | None, dataloader_idx: int) -> dict[str, Any] | None:
        """Batches of decoded pixels become normalised (and, in training, augmented) images on the device."""
        if batch is not None and "pixels" in batch:
            training = self._trainer is not None and self.trainer.training
            gen = None
            if training:
                pixels = batch["pixels"]
                gen = torch.Generator(device=pixels.device)
                gen.manual_seed(hash((self.seed, self.global_rank, self.global_step)) & (2**63 - 1))
            batch["image"] = self.batch_augment(batch.pop("pixels"), aug=training and self.aug,
                                                boxes=batch.pop("aug", None), generator=gen)
        if batch is not None and self.channels_last and batch.get("image") is not None and batch["image"].ndim == 4:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def compute_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The named loss parts for one training batch (``cfg.loss``, see :mod:`edgedistill.losses`)."""
        x, labels = batch["image"], batch["label"]
        out = self.student(x)
        teacher = self.targets(batch, x.device) if self.target != "labels" else None
        logits = self.head(out) if self.target == "embedding" else out
        return self.loss_fn(StudentOutputs(out, logits, labels, teacher), self.cfg)

    def training_step(self, batch: dict[str, Any] | None, batch_idx: int) -> Tensor | None:
        if batch is None:  # every image of the batch unreadable: skip the step
            return None
        parts = self.compute_loss(batch)
        loss = parts["loss"]
        finite = bool(torch.isfinite(loss.detach()))
        if self.trainer.world_size > 1:  # every rank must agree, or the others hang in all-reduce
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            self.trainer.should_stop = True
            values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in parts.items())
            # Raising (instead of returning None) stops before optimizer.step, so no non-finite
            # weight reaches a checkpoint; Lightning tears down and re-raises this exception.
            raise NonFiniteLossError(
                f"Non-finite training loss at epoch {self.current_epoch}, step {self.global_step} ({values}); "
                f"lr={self.cfg.lr} may be too high, or try precision 32"
            )
        bs = batch["image"].shape[0]
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=True, prog_bar=name == "loss", batch_size=bs)
        return loss

    def _eval_step(self, batch: dict[str, Any] | None, stage: str, metric: MulticlassAccuracy) -> None:
        if batch is None:
            return
        logits = self(batch["image"])
        labels = batch["label"]
        metric.update(logits, labels)
        bs = labels.shape[0]
        self.log(f"{stage}/loss", cross_entropy(logits, labels), batch_size=bs, sync_dist=True)
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=stage == "val", batch_size=bs)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> dict[str, Any]:
        c = self.cfg
        # timm's factory: biases and norm scales (1-D) are not decayed (Goyal et al. 2017); "sgd" is Nesterov.
        name = {"sgd": "sgd" if c.momentum > 0 else "momentum"}.get(c.optimizer, c.optimizer)
        opt = create_optimizer_v2(self.student, opt=name, lr=c.lr, weight_decay=c.weight_decay,
                                  momentum=c.momentum, filter_bias_and_bn=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(*self.schedule_steps(c.warmup_epochs), c.schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def schedule_steps(self, warmup_epochs: float) -> tuple[int, int]:
        """``(warmup steps, total steps)``, both from Lightning's count of this run's optimizer steps
        (``estimated_stepping_batches``: epochs or ``max_steps``, devices, gradient accumulation)."""
        trainer = self.trainer
        total = max(int(trainer.estimated_stepping_batches), 1)
        batches = trainer.num_training_batches  # per epoch and device, set once the train loader is built
        per_epoch = (math.ceil(batches / trainer.accumulate_grad_batches) if math.isfinite(batches)
                     else total / max(trainer.max_epochs or 1, 1))
        return round(warmup_epochs * max(per_epoch, 1)), total


class warmup_cosine:  # noqa: N801 - a picklable function object (LambdaLR state, DDP spawn)
    """LR factor at step ``s``: linear warmup ``(s+1)/W`` over W steps, then cosine to 0 (or constant).

    Args:
        warmup_steps: ``W``; 0 disables warmup.
        total_steps: Total optimizer steps of the run.
        schedule: ``cosine`` or ``constant``.
    """

    def __init__(self, warmup_steps: int, total_steps: int, schedule: str = "cosine") -> None:
        self.warmup, self.total, self.schedule = warmup_steps, total_steps, schedule

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
