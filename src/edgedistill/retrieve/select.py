"""Selection: the filters a class's candidates pass (best class, min_score, margin, near-duplicates, top_k),
the balance cap and the ``other`` draw."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgedistill.config import RetrieveConfig
from edgedistill.retrieve.pool import PoolRows
from edgedistill.retrieve.scoring import Scorer


@dataclass
class Kept:
    """One retrieved image."""

    gid: int
    cls: int
    score: float
    rank: int
    margin: float
    why: str


def select_class(
    c: int,
    names: Sequence[str],
    ids: np.ndarray,
    scores: np.ndarray,
    emb: np.ndarray | None,
    cfg: RetrieveConfig,
) -> tuple[list[Kept], Counter]:
    """The images kept for class ``c`` from its candidates, best first, and why the others were dropped.

    Filters, in order: the class must be the image's best (``argmax``), its score at least ``min_score``,
    ahead of the second-best class by ``margin``, not a near-duplicate (embedding cosine >= ``dedup``)
    of an image already kept for the class; the first ``top_k`` that pass are kept.

    Args:
        c: Class index.
        names: Class names (for the reasons).
        ids: int64 ``[n]`` global ids, in rank order (score for ``c`` descending).
        scores: float32 ``[n, C]`` every class's score of each candidate.
        emb: float32 ``[n, D]`` normalised embeddings (for ``dedup``), or None.
        cfg: The settings.

    Returns:
        (kept images, Counter of drop reasons).
    """
    n = len(ids)
    drops: Counter = Counter()
    if n == 0:
        return [], drops
    sc = scores[:, c]
    others = scores.copy()
    others[:, c] = -np.inf
    second = others.argmax(1)
    margin = sc - others[np.arange(n), second]
    fail = np.full(n, "", dtype=object)
    checks = [(scores.argmax(1) != c, "another class scores higher"),
              (sc < cfg.min_score if cfg.min_score is not None else np.zeros(n, bool), "below min_score"),
              (margin < cfg.margin, "margin over the second class too small")]
    for bad, reason in checks:
        fail[(fail == "") & bad] = reason
    kept: list[Kept] = []
    kept_emb = np.zeros((cfg.top_k, emb.shape[1]), np.float32) if (cfg.dedup is not None and emb is not None) else None
    for j in range(n):
        if fail[j]:
            drops[fail[j]] += 1
            continue
        if len(kept) == cfg.top_k:
            drops["beyond top_k"] += 1
            continue
        why = [f"rank {j + 1} for '{names[c]}'", f"score {sc[j]:.3f}"
               + (f" >= min_score {cfg.min_score:g}" if cfg.min_score is not None else ""),
               f"{margin[j]:.3f} over '{names[second[j]]}'" + (f" >= margin {cfg.margin:g}" if cfg.margin else "")]
        if kept_emb is not None:
            near = float((kept_emb[:len(kept)] @ emb[j]).max()) if kept else -1.0
            if near >= cfg.dedup:
                drops["near-duplicate"] += 1
                continue
            if kept:
                why.append(f"nearest kept cosine {near:.3f} < dedup {cfg.dedup:g}")
            kept_emb[len(kept)] = emb[j]
        kept.append(Kept(int(ids[j]), c, float(sc[j]), j + 1, float(margin[j]), "; ".join(why)))
    return kept, drops


def apply_balance(kept: list[list[Kept]], balance: float | None) -> tuple[int | None, list[int]]:
    """Cap every class at ``floor(balance x`` the smallest non-empty class's count``)`` (lowest scores go).

    Returns:
        (the cap or None, images dropped per class). ``kept`` is trimmed in place.
    """
    counts = [len(k) for k in kept if k]
    if balance is None or not counts:
        return None, [0] * len(kept)
    cap = max(1, math.floor(balance * min(counts)))
    dropped = [max(0, len(k) - cap) for k in kept]
    for c, k in enumerate(kept):
        if len(k) > cap:
            del k[cap:]
            for r in k:
                r.why += f"; class capped at {cap} (balance {balance:g})"
    return cap, dropped


def draw_other(pool: PoolRows, scorer: Scorer, names: Sequence[str], n: int, below: float, taken: set[int],
               seed: int, block: int = 4096) -> list[Kept]:
    """``n`` images, drawn at random (seeded), whose best class score is below ``below`` and that no class kept."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.flatnonzero(pool.valid))
    out: list[Kept] = []
    for start in range(0, len(order), block):
        gids = order[start:start + block]
        s = scorer(pool.rows(scorer.array, gids))
        best, arg = s.max(1), s.argmax(1)
        for g, b, a in zip(gids, best, arg):
            if b < below and int(g) not in taken:
                out.append(Kept(int(g), len(names), float(b), len(out) + 1, 0.0,
                                f"other: best score {b:.3f} ('{names[a]}') < {below:g}; drawn at random (seed {seed})"))
                if len(out) == n:
                    return out
    return out
