"""Random crops are drawn one way: the cached views' crops (replayed one at a time) and the pixel path's batch crops
(drawn on the device) come from one sampler, so a student sees the same crop distribution on either path."""

from __future__ import annotations

import numpy as np
import torch

from edgedistill.config import CACHED_CROP_SCALE
from edgedistill.data.transforms import BatchAugment, sample_aug_params
from edgedistill.data.views import ViewSpec

N = 4000


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def test_cached_view_crops_and_batch_crops_share_one_distribution():
    cached = np.array([[p.top, p.left, p.height, p.width, float(p.flip)]
                       for p in (sample_aug_params(0, "train", i, 0) for i in range(N))])
    batch = BatchAugment(ViewSpec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), scale=CACHED_CROP_SCALE).boxes(N, torch.device("cpu"),
                                                                      torch.Generator().manual_seed(0)).double().numpy()
    for boxes in (cached, batch):
        top, left, h, w, _ = boxes.T
        assert (h > 0).all() and (w > 0).all() and (top >= 0).all() and (left >= 0).all()
        assert (top + h <= 1 + 1e-6).all() and (left + w <= 1 + 1e-6).all()  # inside the image
        area = h * w
        assert area.min() >= CACHED_CROP_SCALE[0] - 1e-6  # torchvision's rule: a crop keeps its drawn area
    # KS critical value for 4000 + 4000 samples at alpha = 0.001 is about 0.044
    for name, col in (("top", 0), ("height", 2), ("width", 3)):
        assert _ks(cached[:, col], batch[:, col]) < 0.044, name
    area_ks = _ks(cached[:, 2] * cached[:, 3], batch[:, 2] * batch[:, 3])
    assert area_ks < 0.044
    assert abs(cached[:, 4].mean() - batch[:, 4].mean()) < 0.05  # flips: about half on both paths
