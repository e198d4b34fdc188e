"""A split's cached teacher outputs, gathered from its sources' caches in split order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgedistill.cache.store import TeacherCache
from edgedistill.config import split_names
from edgedistill.errors import DataError


@dataclass
class Gathered:
    """The cached teacher outputs of a split's readable images, in split order.

    Attributes:
        embedding: float32 ``[N, D]``.
        logits: float32 ``[N, C]`` (classifier teachers) or None.
        labels: int64 ``[N]``; -1 where hidden.
        bad: Unreadable images left out.
    """

    embedding: np.ndarray
    logits: np.ndarray | None
    labels: np.ndarray
    bad: int


def gather(splits, caches: dict[str, TeacherCache], spec: str) -> Gathered:
    """The cached teacher outputs of split ``spec`` (readable images only)."""
    embs, logits, labels, bad = [], [], [], 0
    for name in split_names(spec):
        for part in splits.parts.get(name, []):
            cache = caches[part.source]
            valid = cache.valid[part.indices]
            idx = part.indices[valid]
            bad += int((~valid).sum())
            embs.append(cache.embedding[idx].astype(np.float32))
            if cache.logits is not None:
                logits.append(cache.logits[idx].astype(np.float32))
            lab = splits.sources[part.source].labels[idx] if part.labeled else np.full(len(idx), -1)
            labels.append(np.asarray(lab, dtype=np.int64))
    if not embs:
        raise DataError(f"Split {spec!r} is empty for this dataset. Valid: {', '.join(splits.parts)}")
    lg = np.concatenate(logits) if len(logits) == len(embs) else None
    return Gathered(np.concatenate(embs), lg, np.concatenate(labels), bad)


__all__ = ["Gathered", "gather"]
