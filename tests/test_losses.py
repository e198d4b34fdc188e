"""Golden values for the distillation losses: by-hand formulas (plain Python) on small examples, gradients included."""

from __future__ import annotations

import math

import pytest
import torch

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


def _kl_mean_by_hand(s: torch.Tensor, t: torch.Tensor, temp: float) -> float:
    """The tutorial's reduction: the same sum divided by B * C (every element), times T^2."""
    return _kl_by_hand(s, t, temp) / s.shape[1]


@pytest.mark.parametrize("classes", [3, 5])
def test_kl_batchmean_vs_mean_differ_by_class_count(classes: int) -> None:
    g = torch.Generator().manual_seed(classes)
    s, t = torch.randn(4, classes, generator=g), torch.randn(4, classes, generator=g)
    batchmean, mean = kl_divergence(s, t, 2.0), kl_divergence(s, t, 2.0, reduction="mean")
    assert batchmean.item() == pytest.approx(_kl_by_hand(s, t, 2.0), rel=1e-6)
    assert mean.item() == pytest.approx(_kl_mean_by_hand(s, t, 2.0), rel=1e-6)
    assert (batchmean / mean).item() == pytest.approx(classes, rel=1e-6)  # C, not a constant
    # The response-KD loss passes the reduction through.
    parts = response_kd_loss(s, t, torch.full((4,), -1), temperature=2.0, reduction="mean")
    assert parts["kd"].item() == pytest.approx(mean.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="Unknown KD reduction 'sum'. Valid: batchmean, mean"):
        kl_divergence(s, t, 2.0, reduction="sum")


def test_kl_zero_for_identical_and_gradient_only_to_student() -> None:
    assert kl_divergence(T, T, 3.0).item() == pytest.approx(0.0, abs=1e-7)
    assert kl_divergence(T + 7.0, T, 3.0).item() == pytest.approx(0.0, abs=1e-6)  # softmax ignores a shift
    # The teacher's logits come out of a graph with a parameter in it; only the student gets a gradient.
    s = S.clone().requires_grad_(True)
    w = torch.ones(1, requires_grad=True)
    kl_divergence(s, T * w, 2.0).backward()
    assert w.grad is None
    # d/ds [T^2/B sum p_t (log p_t - log p_s)] = T/B (p_s - p_t), by hand.
    temp, B = 2.0, S.shape[0]
    expected = [[temp / B * (a - b) for a, b in zip(_softmax(sr, temp), _softmax(tr, temp))]
                for sr, tr in zip(S.tolist(), T.tolist())]
    torch.testing.assert_close(s.grad, torch.tensor(expected), atol=1e-6, rtol=1e-5)
    # The same for the feature losses: the teacher embedding is a target, never trained.
    e = torch.randn(2, 4, requires_grad=True)
    for kind in ("mse", "mse_normalized", "cosine"):
        e.grad, w.grad = None, None
        feature_distance(e, torch.ones(2, 4) * w, kind).backward()
        assert w.grad is None and e.grad is not None and e.grad.abs().sum() > 0, kind


def test_kl_of_clip_scaled_teacher_by_hand() -> None:
    # Raw cosines (about 0.3) make an almost uniform teacher, so a uniform student is already "right";
    # at CLIP's logit scale (x100) the same student is about log(C) nats away. KL(p_t || uniform)
    # = sum p_t log p_t + log C, by hand.
    cos = [0.30, 0.25, 0.20]
    uniform = torch.zeros(1, 3)

    def kl_to_uniform(logits: list[float]) -> float:
        p = _softmax(logits, 1.0)
        return sum(a * math.log(a) for a in p) + math.log(3)

    raw = kl_divergence(uniform, torch.tensor([cos]), 1.0).item()
    scaled = kl_divergence(uniform, 100 * torch.tensor([cos]), 1.0).item()
    assert raw == pytest.approx(kl_to_uniform(cos), abs=1e-6) and raw < 2e-3  # float32: absolute error
    assert scaled == pytest.approx(kl_to_uniform([100 * c for c in cos]), rel=1e-5) and scaled > 0.9 * math.log(3)


def test_kl_accepts_log_probabilities_as_teacher_logits() -> None:
    # A label-map head outputs log-probabilities that need not sum to one; at T=1 they are renormalised.
    probs = [[0.5, 0.3, 0.1], [0.2, 0.2, 0.2]]
    teacher = torch.log(torch.tensor(probs))
    by_hand = 0.0
    for srow, prow in zip(S.tolist(), probs):
        pt = [p / sum(prow) for p in prow]
        ps = _softmax(srow, 1.0)
        by_hand += sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps))
    assert kl_divergence(S, teacher, 1.0).item() == pytest.approx(by_hand / 2, rel=1e-6)


def test_kl_rejects_bad_temperature() -> None:
    with pytest.raises(ConfigError, match="temperature=0"):
        kl_divergence(S, T, 0.0)


def test_cross_entropy_ignores_hidden_labels() -> None:
    labels = torch.tensor([2, -1])
    by_hand = -math.log(_softmax(S[0].tolist(), 1.0)[2])
    assert cross_entropy(S, labels).item() == pytest.approx(by_hand, rel=1e-6)
    both = (-math.log(_softmax(S[0].tolist(), 1.0)[2]) - math.log(_softmax(S[1].tolist(), 1.0)[0])) / 2
    assert cross_entropy(S, torch.tensor([2, 0])).item() == pytest.approx(both, rel=1e-6)


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
