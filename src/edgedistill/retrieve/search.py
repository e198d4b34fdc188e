"""Candidates per class: an exact running top-k over the cache shards, or a saved flat FAISS index."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from edgedistill import storage
from edgedistill.console import say
from edgedistill.deploy.runtime import l2_normalize
from edgedistill.errors import ConfigError
from edgedistill.retrieve.manifest import FORMAT
from edgedistill.retrieve.pool import PoolRows
from edgedistill.retrieve.scoring import Query, Scorer

FAISS_INDEX = "faiss-flatip.index"
_PAD = 32  # candidates fetched beyond k, so the cut after rescoring is the same whichever search found them


def _merge_topk(best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best of two candidate sets, by (score desc, id asc)."""
    all_s, all_i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
    order = np.lexsort((all_i, -all_s), axis=1)[:, :k]
    return np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)


def exact_search(pool: PoolRows, scorer: Scorer | Query, k: int) -> list[np.ndarray]:
    """Per class, the global ids of its k highest-scoring readable images: a running top-k over the cache shards.

    Returns:
        C arrays of global ids (at most k each; fewer when the pool has fewer readable images).
    """
    C = scorer.num_classes
    best_s, best_i = np.zeros((C, 0), np.float32), np.zeros((C, 0), np.int64)
    for start, x, valid in pool.chunks(scorer.arrays):
        s = scorer.scores(x)  # [S, C]
        s[~valid] = -np.inf
        m = min(k, len(s))
        top = np.argpartition(-s, m - 1, axis=0)[:m] if m < len(s) else np.repeat(np.arange(len(s))[:, None], C, 1)
        best_s, best_i = _merge_topk(best_s, best_i, np.take_along_axis(s, top, 0).T, (top + start).T.astype(np.int64), k)
    return [i[np.isfinite(s)] for s, i in zip(best_s, best_i)]


def _require_faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError("retrieve.search=faiss needs FAISS: pip install 'edgedistill[retrieve]' (faiss-cpu), or use "
                          "retrieve.search=exact (the same results, no extra package)") from None
    return faiss


def faiss_index(cache, log: Callable[[str], None] = say):
    """The flat inner-product FAISS index of a cache's normalised embeddings, built once and saved beside the cache.

    ``<cache>/faiss-flatip.index`` holds the readable rows (ids = row numbers); ``faiss-flatip.json`` records the
    cache manifest's and the index file's sha256, so an index of another cache, or a damaged one, is rebuilt.
    A flat index is exact and holds ``N x D`` float32 in memory while searched (2 GB per million 512-d rows).
    """
    faiss = _require_faiss()
    path, meta_path = cache.path / FAISS_INDEX, cache.path / (FAISS_INDEX.removesuffix(".index") + ".json")
    manifest_sha = storage.file_sha256(cache.path / "manifest.json")
    if path.is_file() and meta_path.is_file():
        meta = storage.read_json(meta_path)
        if meta.get("manifest_sha256") == manifest_sha and meta.get("sha256") == storage.file_sha256(path):
            return faiss.read_index(str(path))
        log(f"{path}: made for another cache or changed; rebuilding it")
    t0 = time.perf_counter()
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(int(cache.manifest["D"])))
    start = 0
    for part in cache.embedding.parts:
        n = len(part)
        valid = cache.valid[start:start + n]
        x = l2_normalize(np.asarray(part, dtype=np.float32))[valid]
        index.add_with_ids(np.ascontiguousarray(x), np.flatnonzero(valid).astype(np.int64) + start)
        start += n
    with storage.atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    storage.write_json(meta_path, {"format": FORMAT, "rows": len(cache), "indexed": int(index.ntotal),
                                   "manifest_sha256": manifest_sha, "sha256": storage.file_sha256(path),
                                   "faiss": getattr(faiss, "__version__", "?"),
                                   "seconds": round(time.perf_counter() - t0, 2)})
    return index


def faiss_search(pool: PoolRows, scorer: Scorer, k: int, log: Callable[[str], None] = say) -> list[np.ndarray]:
    """Like :func:`exact_search`, through each source's saved FAISS index (CLIP teachers: text queries)."""
    if scorer.kind != "text":
        raise ConfigError("retrieve.search=faiss searches image embeddings with text embeddings (CLIP teachers); a "
                          "label map scores the logits, which retrieve.search=exact scans")
    C = scorer.num_classes
    best_s, best_i = np.zeros((C, 0), np.float32), np.zeros((C, 0), np.int64)
    queries = np.ascontiguousarray(scorer._text.astype(np.float32))
    for s, cache in enumerate(pool.caches):
        index = faiss_index(cache, log)
        if index.ntotal == 0:
            continue
        scores, ids = index.search(queries, min(k, int(index.ntotal)))  # [C, k]
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        best_s, best_i = _merge_topk(best_s, best_i, scores, np.where(ids >= 0, ids + pool.offsets[s], -1), k)
    return [i[np.isfinite(s) & (i >= 0)] for s, i in zip(best_s, best_i)]


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True
