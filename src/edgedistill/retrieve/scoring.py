"""Scores: the zero-shot head's (:class:`Scorer`) and the head plus a neighbour margin in the teacher's
embedding space (:class:`Query`: example images, re-ranking)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgedistill.deploy.runtime import l2_normalize


@dataclass
class Scorer:
    """The zero-shot head as ``[n, F] -> [n, C]`` scores: cosine to each class (text) or class probability (label map).

    Attributes:
        head: A ``TextHead`` or ``LabelMapHead``.
        kind: ``text`` or ``label_map``.
    """

    head: Any
    kind: str
    _text: np.ndarray | None = field(default=None, repr=False)
    _groups: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "text":
            self._text = l2_normalize(self.head.text_embeddings.detach().float().cpu().numpy())  # [C, D]
        else:  # 0/1 [C, K]: the head's groups, so a class's probability is one matmul (not a [n, C, K] logsumexp)
            self._groups = (self.head.log_mask == 0).float().cpu().numpy()

    @property
    def array(self) -> str:
        """The cached array it reads: ``embedding`` or ``logits``."""
        return "embedding" if self.kind == "text" else "logits"

    @property
    def arrays(self) -> tuple[str, ...]:
        return (self.array,)

    @property
    def num_classes(self) -> int:
        return int(self.head.num_classes)

    def scores(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """``[n, C]`` scores of rows given as ``{array: [n, F]}``."""
        return self(rows[self.array])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "text":
            return l2_normalize(x) @ self._text.T  # [n, C] cosines
        import torch

        with torch.no_grad():
            p = torch.softmax(torch.from_numpy(np.ascontiguousarray(x)).float(), dim=-1).numpy()  # [n, K]
        return p @ self._groups.T  # [n, C]: each group's summed probability, what exp(head(x)) is


def centered(emb: np.ndarray, center: np.ndarray | None) -> np.ndarray:
    """Normalised embeddings, less the pool's mean direction and normalised again when ``center`` is given.

    A CNN's pooled features are all positive, so every pair of images has a high cosine; measured from the pool's
    mean they spread out, and a neighbour's cosine tells a class from the rest.
    """
    e = l2_normalize(np.asarray(emb, np.float32))
    return e if center is None else l2_normalize(e - center[None])


KNN = 5
"""Neighbours a similarity averages over (:func:`knn_similarity`)."""


def knn_similarity(z: np.ndarray, refs: np.ndarray, k: int = KNN) -> np.ndarray:
    """float32 ``[n]``: the mean of each row's ``k`` highest cosines to ``refs`` ``[m, D]`` (all of them when
    ``m <= k``); -inf when there are none. Rows of both are :func:`centered` embeddings."""
    if len(refs) == 0:
        return np.full(len(z), -np.inf, np.float32)
    s = z @ refs.T  # [n, m]
    k = min(k, s.shape[1])
    return np.partition(s, s.shape[1] - k, axis=1)[:, -k:].mean(1).astype(np.float32)


@dataclass
class Query:
    """The head's score plus a margin in the teacher's embedding space (example images, pseudo-relevance feedback).

    ``score_c(x) = head_c(x) + weight * (sim(x, P_c) - max(max_{c' != c} sim(x, P_c'), sim(x, N)))``, where ``sim``
    is :func:`knn_similarity` (the mean cosine to the ``knn`` nearest), ``P_c`` class ``c``'s positives (its example
    images and, re-ranking, its most confident pool images) and ``N`` the background: pool images that score low for
    every class. Nearest neighbours rather than one centroid, and a background besides the other classes, because a
    pool holds far more than the named classes and each of them is many modes (trucks sit near ships in a CNN's
    space, not near a ship centroid's mean). A class without positives keeps its head score (margin 0).

    Attributes:
        head: The zero-shot head's scorer (cosine to the text embedding, or label-map probability).
        positives: Per class, float32 ``[n_c, D]`` centered embeddings (``n_c`` may be 0).
        negatives: float32 ``[m, D]`` centered embeddings of the background (``m`` may be 0).
        weight: The margin's weight.
        center: The pool's mean normalised embedding ``[D]``: cosines are measured from it (:func:`centered`).
        knn: Neighbours each similarity averages over.
    """

    head: Scorer
    positives: list[np.ndarray]
    negatives: np.ndarray
    weight: float
    center: np.ndarray | None = None
    knn: int = KNN

    @property
    def arrays(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.head.arrays, "embedding")))

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def margins(self, emb: np.ndarray) -> np.ndarray:
        """float32 ``[n, C]``: each class's neighbour similarity less the best of the other classes' and the
        background's (see the class docstring); 0 for a class without positives."""
        z = centered(emb, self.center)
        sims = np.stack([knn_similarity(z, p, self.knn) for p in self.positives], 1)  # [n, C]; -inf: no positives
        bg = knn_similarity(z, self.negatives, self.knn)[:, None]  # [n, 1]
        C = sims.shape[1]
        order = np.argsort(-sims, axis=1)
        best = np.take_along_axis(sims, order[:, :1], 1)
        second = np.take_along_axis(sims, order[:, 1:2], 1) if C > 1 else np.full_like(best, -np.inf)
        other = np.maximum(np.where(order[:, :1] == np.arange(C)[None], second, best), bg)  # [n, C]
        has = np.array([len(p) > 0 for p in self.positives])[None]
        margin = sims - np.where(np.isfinite(other), other, 0.0)
        return np.where(has, margin, 0.0).astype(np.float32)

    def scores(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        return self.head.scores(rows) + self.weight * self.margins(rows["embedding"])
