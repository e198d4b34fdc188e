"""The LightningModule that trains a student: from labels, response KD or feature KD.

Teacher targets come from a *target provider*, called with the batch:

* :class:`CachedTargets`: per-source tables ``[N, C|D]`` (or ``[N, K, C|D]`` for K cached
  augmented views) precomputed once from the teacher-output cache; the fast path.
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

from edgedistill.errors import ConfigError, EdgeDistillError
from edgedistill.losses import IGNORE_INDEX, cross_entropy, feature_kd_loss, label_loss, response_kd_loss


class NonFiniteLossError(EdgeDistillError):
    """The training loss became NaN or infinite (learning rate too high, fp16 overflow, ...)."""


class TargetProvider(Protocol):
    """Gives the teacher's target for a batch: logits ``[B, C]`` or embeddings ``[B, D]``."""

    def __call__(self, batch: dict[str, Any], device: torch.device) -> Tensor: ...


class CachedTargets:
    """Teacher targets looked up in per-source tables held in memory.

    Args:
        tables: ``{source key: Tensor [N, C|D]}``, or ``[N, K, C|D]`` when the cache holds
            K augmented views (then the batch must carry ``"view"``, the view each image shows).
            Rows are indexed by the image's source-local index.
    """

    def __init__(self, tables: dict[str, Tensor]) -> None:
        # Kept in their own dtype (float16 embeddings from the cache: 100k images x 4 views x 512
        # is 400 MB, not 800); rows are converted to float32 as they are gathered.
        self.tables = dict(tables)

    def __call__(self, batch: dict[str, Any], device: torch.device) -> Tensor:
        sources: list[str] = list(batch["source"])
        index = torch.as_tensor(batch["index"]).cpu()
        view = batch.get("view")
        view = torch.as_tensor(view).cpu() if view is not None else None
        first = self._table(sources[0])
        out = torch.empty((len(sources), first.shape[-1]), dtype=torch.float32)
        for src in dict.fromkeys(sources):  # train+unlabeled batches mix sources
            mask = torch.tensor([s == src for s in sources])
            table = self._table(src)
            rows = index[mask]
            if table.ndim == 3:
                v = view[mask] if view is not None else None
                if v is None or bool((v < 0).any()):
                    raise ConfigError(
                        f"The cache of {src!r} holds {table.shape[1]} augmented views but the batch has no view "
                        "number; train with aug=true and views=K matching the cache"
                    )
                out[mask] = table[rows, v].float()
            else:
                out[mask] = table[rows].float()  # embedding tables stay float16 in memory
        return out.to(device, non_blocking=True)

    def _table(self, src: str) -> Tensor:
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
            or ``[B, D]`` (embedding, when ``target="embedding"``).
        target: ``labels`` (cross-entropy), ``logits`` (response KD) or ``embedding`` (feature KD).
        num_classes: Number of classes of the task (for accuracy).
        head: Frozen head turning a student embedding into class logits; required for
            ``target="embedding"``. Saved in checkpoints with the student (it is small).
        targets: Target provider; required unless ``target="labels"``.
        temperature: KD temperature.
        kd_weight: Weight of the KD (response or feature) term.
        ce_weight: Weight of the cross-entropy on labelled images in KD modes.
        feature_loss: ``mse``, ``mse_normalized`` or ``cosine``.
        kd_reduction: ``batchmean`` or ``mean`` (the reference tutorial's; divides by C).
        optimizer: ``sgd`` (momentum, Nesterov), ``adamw`` or ``adam`` (L2 weight decay; the tutorial's).
        lr: Peak learning rate.
        weight_decay: Decoupled (AdamW) or L2 (SGD) weight decay; not applied to biases and norms.
        momentum: SGD momentum.
        warmup_epochs: Linear warmup length in epochs, turned into optimizer steps with Lightning's own count of a
            run's steps (the one the cosine's total comes from), when the optimizer is made.
        schedule: ``cosine`` (to 0 at the last step, after warmup) or ``constant``.
        batch_augment: ``data.transforms.BatchAugment`` for batches of decoded ``pixels`` (the pixels
            input path): crops, flips and normalises them on the device after transfer.
        aug: Crop and flip training batches of pixels (evaluation batches are only normalised).
        seed: Seed of those crops: step ``s`` of rank ``r`` always draws the same ones, so a resumed run
            trains on exactly the batches an uninterrupted one would.
        channels_last: Keep the student's weights and inputs in the NHWC layout (faster convolutions).
    """

    def __init__(
        self,
        student: nn.Module,
        *,
        target: str = "labels",
        num_classes: int,
        head: nn.Module | None = None,
        targets: TargetProvider | None = None,
        temperature: float = 1.0,
        kd_weight: float = 1.0,
        ce_weight: float = 0.0,
        feature_loss: str = "mse",
        kd_reduction: str = "batchmean",
        optimizer: str = "sgd",
        lr: float = 0.1,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        warmup_epochs: float = 0.0,
        schedule: str = "cosine",
        batch_augment: nn.Module | None = None,
        aug: bool = True,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        # Values are validated once, by TrainConfig; these are the module's own wiring invariants.
        if target == "embedding" and head is None:
            raise ConfigError("target='embedding' needs a head (text or linear) to classify the student's embedding")
        if target != "labels" and targets is None:
            raise ConfigError(f"target={target!r} needs teacher targets (a cache or the online teacher)")
        self.student = student
        self.head = head
        if head is not None:
            head.requires_grad_(False).eval()
        self.targets = targets
        self.target = target
        self.num_classes = num_classes
        self.loss_args = {"temperature": temperature, "kd_weight": kd_weight, "ce_weight": ce_weight, "feature_loss": feature_loss,
                          "kd_reduction": kd_reduction}
        self.optim_args = {
            "optimizer": optimizer,
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "warmup_epochs": warmup_epochs,
            "schedule": schedule,
        }
        self.batch_augment, self.aug, self.seed, self.channels_last = batch_augment, aug, seed, channels_last
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
        """The named loss parts for one training batch (see :mod:`edgedistill.losses`)."""
        x, labels = batch["image"], batch["label"]
        out = self.student(x)
        a = self.loss_args
        if self.target == "labels":
            return label_loss(out, labels)
        teacher = self.targets(batch, x.device)
        if self.target == "logits":
            return response_kd_loss(
                out, teacher, labels, temperature=a["temperature"], kd_weight=a["kd_weight"], ce_weight=a["ce_weight"],
                reduction=a["kd_reduction"],
            )
        logits = self.head(out)
        return feature_kd_loss(
            out, teacher, logits, labels, kind=a["feature_loss"], kd_weight=a["kd_weight"], ce_weight=a["ce_weight"]
        )

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
                f"lr={self.optim_args['lr']} may be too high, or try precision 32"
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
        o = self.optim_args
        # timm's factory: biases and norm scales (1-D) are not decayed (Goyal et al. 2017); "sgd" is Nesterov.
        name = {"sgd": "sgd" if o["momentum"] > 0 else "momentum"}.get(o["optimizer"], o["optimizer"])
        opt = create_optimizer_v2(self.student, opt=name, lr=o["lr"], weight_decay=o["weight_decay"],
                                  momentum=o["momentum"], filter_bias_and_bn=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(*self.schedule_steps(o["warmup_epochs"]), o["schedule"]))
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
