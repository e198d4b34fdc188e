"""Scores: the zero-shot head's (:class:`Scorer`) and the head plus a centroid margin in the teacher's
embedding space (:class:`Query`: example images, re-ranking)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

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

    def __post_init__(self) -> None:
        if self.kind == "text":
            self._text = l2_normalize(self.head.text_embeddings.detach().float().cpu().numpy())  # [C, D]

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
            return torch.exp(self.head.float()(torch.from_numpy(np.ascontiguousarray(x)))).numpy()  # [n, C] probabilities


def centered(emb: np.ndarray, center: np.ndarray | None) -> np.ndarray:
    """Normalised embeddings, less the pool's mean direction and normalised again when ``center`` is given.

    A CNN's pooled features are all positive, so every pair of images has a high cosine; measured from the pool's
    mean they spread out, and a centroid's cosine tells a class from the rest.
    """
    e = l2_normalize(np.asarray(emb, np.float32))
    return e if center is None else l2_normalize(e - center[None])


def centroids(groups: Sequence[np.ndarray], dim: int, center: np.ndarray | None = None) -> np.ndarray:
    """float32 ``[C, D]``: per class the normalised mean of its :func:`centered` embeddings ``[n_c, D]``; zeros
    where none."""
    out = np.zeros((len(groups), dim), np.float32)
    for c, g in enumerate(groups):
        if len(g):
            out[c] = l2_normalize(centered(g, center).mean(0, keepdims=True))[0]
    return out


@dataclass
class Query:
    """The head's score plus a margin in the teacher's embedding space (example images, pseudo-relevance feedback).

    ``score_c(x) = head_c(x) + weight * (cos(x, mu_c) - max_{c' != c} cos(x, mu_c'))``, where ``mu_c`` is class
    ``c``'s centroid: the normalised mean of its example images and (re-ranking) its most confident pool images. The
    margin is against the other classes' centroids, so an image near every class gains nothing; a class without a
    centroid keeps its head score (its margin is 0), and when no other class has one the margin is ``cos(x, mu_c)``.

    Attributes:
        head: The zero-shot head's scorer (cosine to the text embedding, or label-map probability).
        mu: float32 ``[C, D]`` normalised centroids, zero rows for classes without.
        weight: The margin's weight.
    """

    head: Scorer
    mu: np.ndarray
    weight: float
    center: np.ndarray | None = None
    """The pool's mean normalised embedding ``[D]``: cosines are measured from it (:func:`centered`); None: from 0."""

    @property
    def arrays(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.head.arrays, "embedding")))

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def margins(self, emb: np.ndarray) -> np.ndarray:
        """float32 ``[n, C]``: each class's centroid cosine minus the best other class's (see the class docstring)."""
        has = np.abs(self.mu).sum(1) > 0  # [C]
        cos = centered(emb, self.center) @ self.mu.T  # [n, C]
        masked = np.where(has[None], cos, -np.inf)
        order = np.argsort(-masked, axis=1)
        best, second = np.take_along_axis(masked, order[:, :1], 1), np.take_along_axis(masked, order[:, 1:2], 1)
        other = np.where(order[:, :1] == np.arange(cos.shape[1])[None], second, best)  # [n, C] best of the others
        other = np.where(np.isfinite(other), other, 0.0)
        return np.where(has[None], cos - other, 0.0).astype(np.float32)

    def scores(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        return self.head.scores(rows) + self.weight * self.margins(rows["embedding"])
