"""Linear probe: ``Linear(D, C)`` on cached teacher embeddings, its weight decay chosen on the validation split.

The probe is what response KD distils when ``train.head=linear``. :func:`train_linear_probe` fits it
on embeddings and picks the weight decay on ``val`` (never on test); ``evaluate.fit_probe`` feeds it the
cached ``train`` embeddings and saves it beside a key of exactly which teacher and images it was fitted on.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedistill.errors import ConfigError


class LinearProbe(nn.Module):
    """``Linear(D, C)`` on (optionally L2-normalised) teacher embeddings.

    Args:
        in_dim: D.
        num_classes: C.
        normalize: L2-normalise inputs first (CLIP embeddings are compared by cosine).
    """

    kind = "linear"

    def __init__(self, in_dim: int, num_classes: int, normalize: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, num_classes)
        self.normalize = bool(normalize)

    def forward(self, emb: Tensor) -> Tensor:
        """``[B, D]`` embeddings -> ``[B, C]`` logits."""
        emb = emb.float()
        return self.linear(F.normalize(emb, dim=-1) if self.normalize else emb)

    @property
    def num_classes(self) -> int:
        return self.linear.out_features

    def arguments(self) -> dict[str, Any]:
        return {"in_dim": self.linear.in_features, "num_classes": self.num_classes, "normalize": self.normalize}

    @classmethod
    def from_saved(cls, args: dict[str, Any], tensors: dict[str, Tensor]) -> LinearProbe:
        return cls(args["in_dim"], args["num_classes"], args["normalize"])


def _as_tensor(a, dtype) -> Tensor:
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def _fit_lbfgs(probe: LinearProbe, x: Tensor, y: Tensor, weight_decay: float, epochs: int, lr: float) -> None:
    """Full-batch L-BFGS on ``CE + weight_decay * ||W||^2`` (bias not decayed)."""
    opt = torch.optim.LBFGS(probe.parameters(), lr=lr, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + weight_decay * probe.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)


@torch.no_grad()
def _accuracy(probe: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((probe(x).argmax(-1) == y).float().mean()) if len(y) else float("nan")


def train_linear_probe(
    train_x,
    train_y,
    val_x,
    val_y,
    *,
    weight_decays: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3, 1e-2),
    epochs: int = 200,
    lr: float = 1.0,
    seed: int = 0,
    normalize: bool = True,
    num_classes: int | None = None,
    select_on: str = "loss",
) -> tuple[LinearProbe, dict[str, Any]]:
    """Fit a linear probe per weight decay by full-batch L-BFGS and keep the best on validation.

    The probe's probabilities are what response KD distils, so by default the weight decay is
    chosen by validation cross-entropy (a proper scoring rule: it rewards calibrated, not just
    correct, probabilities, and is far less noisy than accuracy on a small validation split).

    Args:
        train_x: ``[N, D]`` embeddings of the labeled training split (array or tensor; any float dtype).
        train_y: ``[N]`` int labels.
        val_x: ``[M, D]`` embeddings of the validation split (selection only; never the test split).
        val_y: ``[M]`` int labels.
        weight_decays: L2 penalties to sweep (coefficient on ``||W||^2`` added to the mean CE).
        epochs: L-BFGS iterations per fit.
        lr: L-BFGS step size (1.0 with the strong-Wolfe line search).
        seed: Seed of the weight initialisation.
        normalize: L2-normalise embeddings before the linear layer (recorded in the probe).
        num_classes: C; None: ``max(label) + 1``.
        select_on: ``loss`` (validation cross-entropy, ties to higher accuracy) or ``acc``
            (validation accuracy, ties to lower loss).

    Returns:
        The selected probe (CPU, eval mode) and a report: ``weight_decay`` chosen, ``val_acc``,
        ``train_acc``, and ``sweep`` (per weight decay: val and train accuracy, val loss).
    """
    if select_on not in ("loss", "acc"):
        raise ConfigError(f"select_on={select_on!r} is invalid; valid: loss, acc")
    x, y = _as_tensor(train_x, torch.float32), _as_tensor(train_y, torch.long)
    vx, vy = _as_tensor(val_x, torch.float32), _as_tensor(val_y, torch.long)
    if x.ndim != 2 or len(x) != len(y) or vx.ndim != 2 or len(vx) != len(vy):
        raise ConfigError(f"train_linear_probe: shapes x{tuple(x.shape)} y{tuple(y.shape)} val_x{tuple(vx.shape)} val_y{tuple(vy.shape)} do not match")
    if len(vy) == 0:
        raise ConfigError("train_linear_probe needs a non-empty validation split to choose the weight decay (data.val_fraction > 0)")
    if (y < 0).any():
        raise ConfigError("train_linear_probe got unlabeled (-1) training rows; pass only the labeled split")
    C = num_classes or int(max(y.max(), vy.max())) + 1
    sweep, best, best_key = [], None, None
    for wd in weight_decays:
        torch.manual_seed(seed)
        probe = LinearProbe(x.shape[1], C, normalize)
        _fit_lbfgs(probe, x, y, float(wd), epochs, lr)
        with torch.no_grad():
            val_loss = float(F.cross_entropy(probe(vx), vy))
        row = {"weight_decay": float(wd), "val_acc": _accuracy(probe, vx, vy), "train_acc": _accuracy(probe, x, y), "val_loss": val_loss}
        sweep.append(row)
        key = (-val_loss, row["val_acc"]) if select_on == "loss" else (row["val_acc"], -val_loss)
        if best_key is None or key > best_key:
            best, best_key, chosen = probe, key, row
    report = {**chosen, "sweep": sweep, "selected_on": f"val {select_on}", "epochs": epochs, "seed": seed, "normalize": normalize,
              "num_train": len(y), "num_val": len(vy), "num_classes": C}
    return best.eval(), report
