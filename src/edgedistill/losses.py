"""Distillation losses as pure functions. Each combined loss returns its named parts.

The parts (``{"loss": total, "ce": ..., "kd": ...}``) are logged one by one, so a run's
logs show which term drives training (as in timm's distillation task).

The training losses are the entries of ``registry.LOSSES`` (``TrainConfig.loss``): each is
``loss(out: StudentOutputs, cfg: TrainConfig) -> {"loss", ...parts}``, marked with the
``target`` it trains by :func:`trains`. A new loss is one such function (in its own file, or
a plugin) plus one registry line; the LightningModule passes it the batch and the config.

Conventions: ``B`` batch, ``C`` classes, ``D`` embedding width. Labels use ``-1`` for
images whose label is hidden (unlabeled data); those never enter the cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, get_args

import torch.nn.functional as F
from torch import Tensor

from edgedistill.config import FeatureLoss, KDReduction, TrainConfig
from edgedistill.errors import ConfigError
from edgedistill.registry import LOSSES

FEATURE_LOSSES = get_args(FeatureLoss)
KD_REDUCTIONS = get_args(KDReduction)
IGNORE_INDEX = -1


def cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Mean cross-entropy over the images that have a label.

    ``CE = -1/|L| sum_{i in L} log softmax(z_i)[y_i]`` with ``L = {i : y_i != ignore_index}``.

    Args:
        logits: Student class logits ``[B, C]``.
        labels: Integer labels ``[B]``; ``ignore_index`` marks a hidden label.
        ignore_index: Label value that is skipped.

    Returns:
        Scalar tensor. ``0`` (still attached to the graph, so DDP sees every parameter
        used) when the batch holds no label at all, where ``F.cross_entropy`` would give NaN.
    """
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def kl_divergence(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, reduction: str = "batchmean"
) -> Tensor:
    """Response distillation: ``T^2 * KL(p_t || p_s)`` averaged over the batch (Hinton et al., 2015).

    ``p_t = softmax(t / T)``, ``p_s = softmax(s / T)``,
    ``KD = T^2 / B * sum_i sum_c p_t[i, c] * (log p_t[i, c] - log p_s[i, c])``.

    The ``T^2`` factor keeps the gradient magnitude independent of ``T``
    ("Distilling the Knowledge in a Neural Network", arXiv:1503.02531). The reduction is
    ``batchmean`` (sum over classes, mean over images): PyTorch's default ``'mean'`` also
    divides by the number of classes, which silently shrinks the loss ``C`` times.

    The teacher logits must already carry the teacher's scale: for CLIP heads they are
    ``logit_scale * cos`` (about ``100 * cos``), otherwise the cosines (about +-0.3) give
    an almost uniform teacher distribution. Log-probabilities (``LabelMapHead``) are valid
    logits too, since ``log_softmax`` of log-probabilities returns them unchanged at ``T=1``.

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``; no gradient flows into them.
        temperature: Softmax temperature ``T > 0``.
        reduction: ``batchmean`` (correct); ``mean`` additionally divides by ``C``, as the
            reference tutorial did; kept only to reproduce its numbers.

    Returns:
        Scalar tensor.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature={temperature} must be > 0")
    if reduction not in KD_REDUCTIONS:
        raise ConfigError(f"Unknown KD reduction {reduction!r}. Valid: {', '.join(KD_REDUCTIONS)}")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    if reduction == "mean":
        kl = kl / student_logits.shape[-1]
    return kl * temperature**2


def feature_distance(student_emb: Tensor, teacher_emb: Tensor, kind: str = "mse") -> Tensor:
    """Feature distillation: distance between the student's and the teacher's embeddings.

    - ``mse``: ``mean((s - t)^2)`` over all ``B * D`` entries, on raw embeddings (the
      tutorial's embedding students; FitNets, Romero et al., 2015, without the regressor).
    - ``mse_normalized``: the same on L2-normalised embeddings, so only the direction counts
      (what a CLIP text head uses).
    - ``cosine``: ``mean_i (1 - cos(s_i, t_i))``.

    Args:
        student_emb: ``[B, D]``.
        teacher_emb: ``[B, D]``; no gradient flows into it.
        kind: One of ``mse``, ``mse_normalized``, ``cosine``.

    Returns:
        Scalar tensor.
    """
    s, t = student_emb.float(), teacher_emb.detach().float()
    if kind == "mse":
        return F.mse_loss(s, t)
    if kind == "mse_normalized":
        return F.mse_loss(F.normalize(s, dim=-1), F.normalize(t, dim=-1))
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()
    raise ConfigError(f"Unknown feature loss {kind!r}. Valid: {', '.join(FEATURE_LOSSES)}")


def label_loss(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Supervised training on labels only: ``loss = CE``.

    Args:
        logits: ``[B, C]``.
        labels: ``[B]`` with ``-1`` for hidden labels.

    Returns:
        ``{"loss": CE, "ce": CE}``.
    """
    ce = cross_entropy(logits, labels)
    return {"loss": ce, "ce": ce.detach()}


def response_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    reduction: str = "batchmean",
) -> dict[str, Tensor]:
    """Response KD plus optional cross-entropy where labels exist.

    ``loss = kd_weight * T^2 KL(p_t || p_s) + ce_weight * CE(s, y)`` (see :func:`kl_divergence`).

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]`` (the teacher head's logits).
        labels: ``[B]`` with ``-1`` for hidden labels.
        temperature: KD temperature ``T``.
        kd_weight: Weight of the KD term.
        ce_weight: Weight of the CE term (0 skips it).
        reduction: ``batchmean`` or ``mean`` (see :func:`kl_divergence`).

    Returns:
        ``{"loss", "kd", "ce"}``; the parts are detached, ``loss`` carries the gradient.
    """
    kd = kl_divergence(student_logits, teacher_logits, temperature, reduction)
    return _weighted(kd, student_logits, labels, kd_weight, ce_weight)


def feature_kd_loss(
    student_emb: Tensor,
    teacher_emb: Tensor,
    student_logits: Tensor,
    labels: Tensor,
    *,
    kind: str = "mse",
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
) -> dict[str, Tensor]:
    """Feature KD plus optional cross-entropy on the head's logits where labels exist.

    ``loss = kd_weight * dist(s_emb, t_emb) + ce_weight * CE(head(s_emb), y)``
    (see :func:`feature_distance`).

    Args:
        student_emb: ``[B, D]``.
        teacher_emb: ``[B, D]``.
        student_logits: ``[B, C]``, the frozen head applied to ``student_emb``.
        labels: ``[B]`` with ``-1`` for hidden labels.
        kind: ``mse``, ``mse_normalized`` or ``cosine``.
        kd_weight: Weight of the feature term.
        ce_weight: Weight of the CE term (0 skips it).

    Returns:
        ``{"loss", "kd", "ce"}``.
    """
    kd = feature_distance(student_emb, teacher_emb, kind)
    return _weighted(kd, student_logits, labels, kd_weight, ce_weight)


# ----------------------------------------------------------------------------- the registered training losses


@dataclass
class StudentOutputs:
    """What a training loss sees of one batch.

    Attributes:
        output: The student's own output: class logits ``[B, C]``, or an embedding ``[B, D]`` (``target=embedding``).
        logits: Class logits ``[B, C]``: ``output``, or the frozen head applied to it for an embedding student.
        labels: ``[B]`` with ``-1`` for hidden labels.
        teacher: The teacher's target: logits ``[B, C]`` (``target=logits``), embedding ``[B, D]``
            (``target=embedding``); None for ``target=labels``.
    """

    output: Tensor
    logits: Tensor
    labels: Tensor
    teacher: Tensor | None = None


Loss = Callable[[StudentOutputs, TrainConfig], dict[str, Tensor]]
DEFAULT_LOSS = {"labels": "ce", "logits": "kd", "embedding": "feature"}
"""The loss of each ``TrainConfig.target`` when ``TrainConfig.loss`` is None."""


def trains(target: str) -> Callable[[Loss], Loss]:
    """Mark a registered loss with the ``TrainConfig.target`` it trains (what the student outputs, what the teacher
    gives): ``labels``, ``logits`` or ``embedding``."""
    def mark(fn: Loss) -> Loss:
        fn.target = target
        return fn
    return mark


def resolve_loss(cfg: TrainConfig) -> tuple[str, Loss]:
    """The name and function of ``cfg``'s loss (``cfg.loss`` or the target's default), checked against its target.

    Raises:
        ConfigError: an unknown loss, or one that trains another target.
    """
    name = cfg.loss or DEFAULT_LOSS[cfg.target]
    fn = LOSSES[name]
    if getattr(fn, "target", None) != cfg.target:
        raise ConfigError(f"train.loss={name!r} is invalid with train.target={cfg.target!r}: it trains "
                          f"target={getattr(fn, 'target', None)!r}. Losses of {cfg.target!r}: "
                          + ", ".join(n for n, f in LOSSES.items() if getattr(f, "target", None) == cfg.target))
    return name, fn


@trains("labels")
def ce_loss(out: StudentOutputs, cfg: TrainConfig) -> dict[str, Tensor]:
    """``ce``: cross-entropy on the labelled images (:func:`label_loss`)."""
    return label_loss(out.logits, out.labels)


@trains("logits")
def kd_loss(out: StudentOutputs, cfg: TrainConfig) -> dict[str, Tensor]:
    """``kd``: response KD plus weighted cross-entropy (:func:`response_kd_loss`)."""
    return response_kd_loss(out.output, out.teacher, out.labels, temperature=cfg.temperature, kd_weight=cfg.kd_weight,
                            ce_weight=cfg.ce_weight, reduction=cfg.kd_reduction)


@trains("embedding")
def feature_loss(out: StudentOutputs, cfg: TrainConfig) -> dict[str, Tensor]:
    """``feature``: feature KD (``cfg.feature_loss`` distance) plus weighted cross-entropy (:func:`feature_kd_loss`)."""
    return feature_kd_loss(out.output, out.teacher, out.logits, out.labels, kind=cfg.feature_loss,
                           kd_weight=cfg.kd_weight, ce_weight=cfg.ce_weight)


def _weighted(kd: Tensor, logits: Tensor, labels: Tensor, kd_weight: float, ce_weight: float) -> dict[str, Tensor]:
    # CE is always computed so it can be logged, but only enters the total when weighted.
    ce = cross_entropy(logits, labels)
    loss = kd_weight * kd + (ce_weight * ce if ce_weight else 0.0)
    return {"loss": loss, "kd": kd.detach(), "ce": ce.detach()}


__all__ = [
    "DEFAULT_LOSS",
    "FEATURE_LOSSES",
    "StudentOutputs",
    "ce_loss",
    "feature_loss",
    "kd_loss",
    "resolve_loss",
    "trains",
    "KD_REDUCTIONS",
    "cross_entropy",
    "kl_divergence",
    "feature_distance",
    "label_loss",
    "response_kd_loss",
    "feature_kd_loss",
]
