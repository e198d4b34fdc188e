"""Golden values for the distillation losses: by-hand formulas on a 2x3 example and torch references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgedistill.errors import ConfigError
from edgedistill.losses import (
    cross_entropy,
    feature_distance,
    feature_kd_loss,
    kl_divergence,
    label_loss,
    response_kd_loss,
)

# A 2x3 example: B=2 images, C=3 classes.
S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
T = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.5, 2.5]])


def _softmax(row: list[float], temp: float) -> list[float]:
    e = [math.exp(v / temp) for v in row]
    return [v / sum(e) for v in e]


def _kl_by_hand(s: torch.Tensor, t: torch.Tensor, temp: float) -> float:
    """sum_i sum_c p_t (log p_t - log p_s) / B * T^2, in plain Python."""
    total = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        ps, pt = _softmax(srow, temp), _softmax(trow, temp)
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))
    return total / len(s) * temp**2


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_kl_matches_hand_computation(temp: float) -> None:
    assert kl_divergence(S, T, temp).item() == pytest.approx(_kl_by_hand(S, T, temp), rel=1e-6)


def test_kl_t2_golden_value() -> None:
    # sum p_t (log p_t - log p_s) / B * T^2 for T=2, computed once in plain Python; pins T^2 and batchmean.
    assert kl_divergence(S, T, 2.0).item() == pytest.approx(0.354905, abs=1e-6)


@pytest.mark.filterwarnings("ignore:reduction. .mean.")
def test_kl_batchmean_vs_mean_differ_by_class_count() -> None:
    log_ps, log_pt = F.log_softmax(S / 2, -1), F.log_softmax(T / 2, -1)
    batchmean = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
    mean = F.kl_div(log_ps, log_pt, reduction="mean", log_target=True)  # the tutorial's reduction
    assert (batchmean / mean).item() == pytest.approx(S.shape[1])
    assert kl_divergence(S, T, 2.0).item() == pytest.approx(batchmean.item() * 4)
    assert kl_divergence(S, T, 2.0, reduction="mean").item() == pytest.approx(mean.item() * 4)


def test_kl_zero_for_identical_and_gradient_only_to_student() -> None:
    s = S.clone().requires_grad_(True)
    t = T.clone().requires_grad_(True)
    assert kl_divergence(T, T, 3.0).item() == pytest.approx(0.0, abs=1e-7)
    kl_divergence(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_kl_clip_scale_makes_teacher_confident() -> None:
    # Cosines of ~0.3 at T=1 give an almost uniform teacher; x100 (CLIP's logit scale) does not.
    cos = torch.tensor([[0.30, 0.25, 0.20]])
    assert F.softmax(cos, -1).max() < 0.36
    assert F.softmax(100 * cos, -1).max() > 0.99


def test_kl_rejects_bad_temperature() -> None:
    with pytest.raises(ConfigError, match="temperature=0"):
        kl_divergence(S, T, 0.0)


def test_cross_entropy_ignores_hidden_labels() -> None:
    labels = torch.tensor([2, -1])
    by_hand = -math.log(_softmax(S[0].tolist(), 1.0)[2])
    assert cross_entropy(S, labels).item() == pytest.approx(by_hand, rel=1e-6)
    assert cross_entropy(S, torch.tensor([2, 0])).item() == pytest.approx(F.cross_entropy(S, torch.tensor([2, 0])).item())


def test_cross_entropy_zero_without_labels_and_keeps_graph() -> None:
    s = S.clone().requires_grad_(True)
    ce = cross_entropy(s, torch.tensor([-1, -1]))
    assert ce.item() == 0.0 and not torch.isnan(ce)
    ce.backward()  # attached to the graph: DDP sees every parameter used
    assert torch.equal(s.grad, torch.zeros_like(s))


def test_feature_distances_golden() -> None:
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    t = torch.tensor([[0.0, 5.0], [0.0, 2.0]])
    # mse: ((9 + 1) + (1 + 4)) / 4
    assert feature_distance(s, t, "mse").item() == pytest.approx(15 / 4)
    # normalised: s -> (0.6, 0.8), (1, 0); t -> (0, 1), (0, 1)
    expect = ((0.6**2 + 0.2**2) + (1 + 1)) / 4
    assert feature_distance(s, t, "mse_normalized").item() == pytest.approx(expect)
    # cosine: 1 - 0.8 and 1 - 0
    assert feature_distance(s, t, "cosine").item() == pytest.approx((0.2 + 1.0) / 2)
    # MSE of normalised vectors is 2 (1 - cos) / D
    assert feature_distance(s, t, "mse_normalized").item() == pytest.approx(2 * (0.2 + 1.0) / 2 / 2)
    with pytest.raises(ConfigError, match="Unknown feature loss 'l1'"):
        feature_distance(s, t, "l1")


def test_combined_losses_return_named_parts() -> None:
    labels = torch.tensor([1, -1])
    parts = response_kd_loss(S, T, labels, temperature=2.0, kd_weight=0.5, ce_weight=2.0)
    assert set(parts) == {"loss", "kd", "ce"}
    assert parts["kd"].item() == pytest.approx(_kl_by_hand(S, T, 2.0), rel=1e-6)
    assert parts["ce"].item() == pytest.approx(cross_entropy(S, labels).item())
    assert parts["loss"].item() == pytest.approx(0.5 * parts["kd"].item() + 2.0 * parts["ce"].item(), rel=1e-6)
    # ce_weight=0: CE is reported but does not count
    kd_only = response_kd_loss(S, T, labels, temperature=2.0)
    assert kd_only["loss"].item() == pytest.approx(kd_only["kd"].item())
    assert kd_only["ce"].item() > 0

    emb_s, emb_t = torch.randn(2, 4), torch.randn(2, 4)
    f = feature_kd_loss(emb_s, emb_t, S, labels, kind="cosine", kd_weight=1.0, ce_weight=1.0)
    assert f["loss"].item() == pytest.approx(f["kd"].item() + f["ce"].item(), rel=1e-6)

    lab = label_loss(S, labels)
    assert set(lab) == {"loss", "ce"} and lab["loss"].item() == pytest.approx(lab["ce"].item())
