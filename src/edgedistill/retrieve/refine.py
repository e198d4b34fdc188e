"""Example images and re-ranking: the head's query moved toward each class's positives (and away from the
background) in the teacher's embedding space (the rule is :class:`edgedistill.retrieve.scoring.Query`'s)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgedistill import storage
from edgedistill.cache import cache_source
from edgedistill.config import RetrieveConfig
from edgedistill.data.sources import ImageFolderSource, safe_name
from edgedistill.deploy.runtime import l2_normalize
from edgedistill.errors import ConfigError
from edgedistill.prompts import normalise_name
from edgedistill.retrieve.pool import PoolRows
from edgedistill.retrieve.scoring import Query, Scorer, centered
from edgedistill.retrieve.search import exact_search


def open_examples(path: str, names: Sequence[str]):
    """``<path>/<class>/*.jpg`` as a labelled source indexed by the prompts' classes (``names``).

    Raises:
        ConfigError: not a folder, or a class folder that names no prompts class.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"retrieve.examples={path!r} is not a folder; give one holding <class>/*.jpg, a few example "
                          "images per prompts class")
    by_key = {normalise_name(n): n for n in names}
    folders = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [f for f in folders if normalise_name(f) not in by_key]
    if unknown:
        raise ConfigError(f"retrieve.examples={path!r}: folder(s) {unknown} name no class of the prompts "
                          f"({', '.join(names)}); name each folder after a prompts class")
    src = ImageFolderSource(root, f"examples/{safe_name(root.resolve().name, 'examples')}")
    src.class_index = np.array([list(names).index(by_key[normalise_name(f)]) for f in src.classes], np.int64)
    return src


@dataclass
class Examples:
    """The example images as the teacher sees them.

    Attributes:
        emb: float32 ``[E, D]`` embeddings of the readable examples.
        labels: int64 ``[E]`` their prompts class indices.
        sha256: the examples' file hashes (a pool image with one of them is an example, not a result).
        counts: readable examples per class name.
    """

    emb: np.ndarray
    labels: np.ndarray
    sha256: set[str]
    counts: dict[str, int]


def load_examples(plan, num_workers: int = 2) -> Examples:
    """Embed the plan's example images with its teacher, through the teacher cache (a source like the pool's)."""
    src = plan.examples
    cache = cache_source(plan.teacher, src, plan.cache_dir, batch_size=plan.teacher_cfg.batch_size,
                         num_workers=num_workers)
    ok = np.flatnonzero(cache.valid)
    labels = src.class_index[src.labels[ok]]
    names = [p.name for p in plan.prompts]
    return Examples(np.asarray(cache.embedding[ok], np.float32), labels,
                    {storage.file_sha256(src.files[i]) for i in range(len(src))},
                    {names[c]: int((labels == c).sum()) for c in sorted(set(labels.tolist()))})


def pool_mean(pool: PoolRows) -> np.ndarray:
    """float32 ``[D]``: the mean of the pool's normalised embeddings (readable images), one pass over the shards."""
    total, n = None, 0
    for _, x, valid in pool.chunks(("embedding",)):
        e = l2_normalize(x["embedding"][valid])
        total = e.sum(0) if total is None else total + e.sum(0)
        n += len(e)
    return (total / max(n, 1)).astype(np.float32)


NEGATIVES = 512
"""Background images re-ranking compares with: the lower-scoring half of a seeded sample of twice as many."""


def background(pool: PoolRows, head: Scorer, seed: int, n: int = NEGATIVES) -> np.ndarray:
    """int64 global ids of up to ``n`` readable pool images that score low for every class: of a seeded random
    sample of ``2n``, the half whose best head score is lowest (reads ``2n`` rows, not the pool)."""
    sample = np.sort(np.random.default_rng(seed).permutation(np.flatnonzero(pool.valid))[:2 * n])
    if len(sample) == 0:
        return sample.astype(np.int64)
    best = head.scores(pool.rows_of(head.arrays, sample)).max(1)
    return sample[np.argsort(best, kind="stable")[:max(1, min(n, len(sample) // 2))]].astype(np.int64)


def refine(pool: PoolRows, head: Scorer, found: list[np.ndarray], examples: Examples | None, cfg: RetrieveConfig,
           k: int) -> tuple[Scorer | Query, list[np.ndarray], list[dict]]:
    """The final query and its candidates: the head's, moved by the example images and re-ranking rounds.

    With examples, each class's positives start as them and the pool is searched with the :class:`Query`; each
    re-ranking round then adds to every class's positives its ``rerank_top`` most confident images under the current
    query (those whose best class it is, examples excluded) and searches again. The background is drawn once
    (:func:`background`). Without examples or re-ranking: the head as it is.

    Returns:
        ``(scorer, candidates per class (global ids, best first), per step the positives of each class)``.
    """
    if examples is None and not cfg.rerank:
        return head, found, []
    C, D = head.num_classes, int(pool.caches[0].embedding.shape[1])
    center = pool_mean(pool) if cfg.rerank_center else None
    seeds = [centered(examples.emb[examples.labels == c], center) if examples is not None
             else np.zeros((0, D), np.float32) for c in range(C)]
    negatives = centered(pool.rows("embedding", background(pool, head, cfg.seed)), center)
    scorer: Scorer | Query = head
    rounds: list[dict] = []
    if examples is not None:
        scorer = Query(head, seeds, negatives, cfg.rerank_weight, center)
        found = exact_search(pool, scorer, k)
        rounds.append({"examples": [len(g) for g in seeds], "pool": [0] * C, "background": len(negatives)})
    hashes: dict[int, str] = {}
    for _ in range(cfg.rerank):
        tops = []
        for c, ids in enumerate(found):
            s = scorer.scores(pool.rows_of(scorer.arrays, ids))
            order = np.lexsort((ids, -s[:, c]))
            mine = [int(g) for g in ids[order][s[order].argmax(1) == c]]
            if examples is not None:
                mine = [g for g in mine if hashes.setdefault(g, pool.content_sha256(g)) not in examples.sha256]
            tops.append(centered(pool.rows("embedding", np.array(mine[:cfg.rerank_top], np.int64)), center))
        scorer = Query(head, [np.concatenate([e, t]) for e, t in zip(seeds, tops)], negatives, cfg.rerank_weight,
                       center)
        found = exact_search(pool, scorer, k)
        rounds.append({"examples": [len(g) for g in seeds], "pool": [len(t) for t in tops], "background": len(negatives)})
    return scorer, found, rounds
