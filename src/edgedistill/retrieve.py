"""Retrieval: class prompts + an unlabeled pool -> the images of each class, a labelled dataset made with zero labels.

    prompts file ──► zero-shot head (CLIP: names and synonyms x templates; ImageNet: names -> label map)
    pool ──► teacher cache (once, shard by shard) ──► per class: candidates (exact top-k over the shards, or FAISS)
         ──► rescored ──► filters (best class, min_score, margin, near-duplicates, top_k, balance) [+ other]
         ──► manifest.csv, retrieval.json, head, contact_sheet.png

A score is the zero-shot head's: the cosine between an image's embedding and a class's text
embedding (CLIP teachers), or the class's label-map probability (ImageNet classifiers). The
pool streams through the cache: scores are computed shard by shard from its memory maps, and
only the candidates' rows are read again, so no ``[N, C]`` matrix is ever held.

Search: ``exact`` keeps a running top-(k + pad) per class over the shards; ``faiss`` searches a
flat inner-product index (exact too) built once per source and saved beside its cache. Both
hand their candidates to the same rescoring, sorted by (score, pool order) and cut at k, so
they select the same images.

Output folder (``out``)::

    manifest.csv        one row per kept image: path, class, score, rank, margin, why, source, index
    retrieval.json      classes, prompts, the pool's sources (with identities), teacher, settings, counts, drops
    head.json/.safetensors   the zero-shot head: what students distil (``--train.head_path <out>/head``)
    label_map.json, label_map_review.{json,txt}   ImageNet teachers: the label map and why each class is in it
    contact_sheet.png   per class its top images and its borderline (lowest kept) ones

``manifest.csv`` is a dataset: ``--data.dataset manifest --data.root <out>/manifest.csv`` (its rows
may be deleted by a person who checked the contact sheet; the pool's sources are reopened and
checked, so the pool's teacher cache is reused).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edgedistill import storage
from edgedistill.config import DEFAULT_CACHE_DIR, DataConfig, RetrieveConfig, TeacherConfig, asdict
from edgedistill.console import say
from edgedistill.deploy.runtime import l2_normalize
from edgedistill.errors import ConfigError, DataError

FORMAT = 1
MANIFEST_COLUMNS = ("path", "class", "score", "rank", "margin", "why", "source", "index")
FAISS_INDEX = "faiss-flatip.index"
_PAD = 32  # candidates fetched beyond k, so the cut after rescoring is the same whichever search found them


# ----------------------------------------------------------------------------- the pool as rows


class PoolRows:
    """The pool's cached teacher outputs as one row space: global id = source offset + index in the source.

    Args:
        keys: Source keys, in pool order.
        caches: ``{key: cache.TeacherCache}``.
        sources: ``{key: Source}``.
    """

    def __init__(self, keys: Sequence[str], caches: dict, sources: dict) -> None:
        self.keys = list(keys)
        self.caches = [caches[k] for k in self.keys]
        self.sources = [sources[k] for k in self.keys]
        self.offsets = np.cumsum([0] + [len(c) for c in self.caches])  # [S+1]
        self.valid = np.concatenate([c.valid for c in self.caches])  # bool [N]: readable images

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, gid: int) -> tuple[int, int]:
        """(source position, index within it) of global id ``gid``."""
        s = int(np.searchsorted(self.offsets, gid, side="right")) - 1
        return s, int(gid - self.offsets[s])

    def chunks(self, arrays: Sequence[str]) -> Iterator[tuple[int, dict[str, np.ndarray], np.ndarray]]:
        """``(first global id, {array: float32 [S, F]}, valid [S])`` for each cache shard, of every array asked
        (``embedding``, ``logits``); a cache's arrays are sharded alike."""
        for s, cache in enumerate(self.caches):
            local = 0
            for parts in zip(*(getattr(cache, a).parts for a in arrays)):
                n = len(parts[0])
                yield (int(self.offsets[s]) + local, {a: np.asarray(p, dtype=np.float32) for a, p in zip(arrays, parts)},
                       cache.valid[local:local + n])
                local += n

    def rows(self, array: str, gids: np.ndarray) -> np.ndarray:
        """float32 ``[len(gids), F]``: rows of ``array`` for global ids, in the given order (only they are read)."""
        gids = np.asarray(gids, dtype=np.int64)
        out = np.empty((len(gids), *getattr(self.caches[0], array).shape[1:]), dtype=np.float32)
        src = np.searchsorted(self.offsets, gids, side="right") - 1
        for s in np.unique(src):
            sel = np.flatnonzero(src == s)
            local = gids[sel] - self.offsets[s]
            order = np.argsort(local)  # sorted reads are sequential on the memory maps
            out[sel[order]] = getattr(self.caches[s], array)[local[order]]
        return out

    def rows_of(self, arrays: Sequence[str], gids: np.ndarray) -> dict[str, np.ndarray]:
        """``{array: rows(array, gids)}`` for every array asked."""
        return {a: self.rows(a, gids) for a in arrays}

    def content_sha256(self, gid: int) -> str:
        """sha256 of an image's file bytes (a tar member's own bytes): the same photo under any name."""
        s, i = self.locate(gid)
        return item_sha256(self.sources[s], i)

    def describe(self, gid: int) -> tuple[str, int, str]:
        """``(source key, index, path)`` of a global id; the path is a file or ``<tar>::<member>``."""
        from edgedistill.data.sources import describe_item

        s, i = self.locate(gid)
        return self.keys[s], i, describe_item(self.sources[s], i)

    def load(self, gid: int):
        s, i = self.locate(gid)
        return self.sources[s].load(i)


def item_sha256(source, i: int) -> str:
    """sha256 of image ``i``'s bytes as stored: a file's, or a tar member's."""
    if getattr(source, "is_tar", False):
        with open(source.path, "rb") as f:
            f.seek(int(source._offsets[i]))
            return hashlib.sha256(f.read(int(source._sizes[i]))).hexdigest()
    return storage.file_sha256(source.files[i])


# ----------------------------------------------------------------------------- scores


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


def centroids(groups: Sequence[np.ndarray], dim: int) -> np.ndarray:
    """float32 ``[C, D]``: per class the normalised mean of its normalised embeddings ``[n_c, D]``; zeros where none."""
    out = np.zeros((len(groups), dim), np.float32)
    for c, g in enumerate(groups):
        if len(g):
            out[c] = l2_normalize(l2_normalize(np.asarray(g, np.float32)).mean(0, keepdims=True))[0]
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

    @property
    def arrays(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.head.arrays, "embedding")))

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def margins(self, emb: np.ndarray) -> np.ndarray:
        """float32 ``[n, C]``: each class's centroid cosine minus the best other class's (see the class docstring)."""
        has = np.abs(self.mu).sum(1) > 0  # [C]
        cos = l2_normalize(emb) @ self.mu.T  # [n, C]
        masked = np.where(has[None], cos, -np.inf)
        order = np.argsort(-masked, axis=1)
        best, second = np.take_along_axis(masked, order[:, :1], 1), np.take_along_axis(masked, order[:, 1:2], 1)
        other = np.where(order[:, :1] == np.arange(cos.shape[1])[None], second, best)  # [n, C] best of the others
        other = np.where(np.isfinite(other), other, 0.0)
        return np.where(has[None], cos - other, 0.0).astype(np.float32)

    def scores(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        return self.head.scores(rows) + self.weight * self.margins(rows["embedding"])


# ----------------------------------------------------------------------------- search


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


# ----------------------------------------------------------------------------- selection


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


# ----------------------------------------------------------------------------- example images and re-ranking


def open_examples(path: str, names: Sequence[str]):
    """``<path>/<class>/*.jpg`` as a labelled source indexed by the prompts' classes (``names``).

    Raises:
        ConfigError: not a folder, or a class folder that names no prompts class.
    """
    from edgedistill.data.sources import ImageFolderSource, safe_name
    from edgedistill.prompts import normalise_name

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
    from edgedistill.cache import cache_source

    src = plan.examples
    cache = cache_source(plan.teacher, src, plan.cache_dir, batch_size=plan.teacher_cfg.batch_size,
                         num_workers=num_workers)
    ok = np.flatnonzero(cache.valid)
    labels = src.class_index[src.labels[ok]]
    names = [p.name for p in plan.prompts]
    return Examples(np.asarray(cache.embedding[ok], np.float32), labels,
                    {storage.file_sha256(src.files[i]) for i in range(len(src))},
                    {names[c]: int((labels == c).sum()) for c in sorted(set(labels.tolist()))})


def refine(pool: PoolRows, head: Scorer, found: list[np.ndarray], examples: Examples | None, cfg: RetrieveConfig,
           k: int) -> tuple[Scorer | Query, list[np.ndarray], list[dict]]:
    """The final query and its candidates: the head's, moved by the example images and re-ranking rounds.

    With examples, each class's centroid starts as theirs and the pool is searched with the :class:`Query`; each
    re-ranking round then adds to every centroid its class's ``rerank_top`` most confident images under the current
    query (those whose best class it is, examples excluded) and searches again. Without either: the head as it is.

    Returns:
        ``(scorer, candidates per class (global ids, best first), per round the images in each centroid)``.
    """
    if examples is None and not cfg.rerank:
        return head, found, []
    C, D = head.num_classes, int(pool.caches[0].embedding.shape[1])
    seeds = [examples.emb[examples.labels == c] if examples is not None else np.zeros((0, D), np.float32)
             for c in range(C)]
    scorer: Scorer | Query = head
    rounds: list[dict] = []
    if examples is not None:
        scorer = Query(head, centroids(seeds, D), cfg.rerank_weight)
        found = exact_search(pool, scorer, k)
        rounds.append({"examples": [len(g) for g in seeds], "pool": [0] * C})
    hashes: dict[int, str] = {}
    for _ in range(cfg.rerank):
        tops = []
        for c, ids in enumerate(found):
            s = scorer.scores(pool.rows_of(scorer.arrays, ids))
            order = np.lexsort((ids, -s[:, c]))
            mine = [int(g) for g in ids[order][s[order].argmax(1) == c]]
            if examples is not None:
                mine = [g for g in mine if hashes.setdefault(g, pool.content_sha256(g)) not in examples.sha256]
            tops.append(pool.rows("embedding", np.array(mine[:cfg.rerank_top], np.int64)))
        scorer = Query(head, centroids([np.concatenate([e, t]) for e, t in zip(seeds, tops)], D), cfg.rerank_weight)
        found = exact_search(pool, scorer, k)
        rounds.append({"examples": [len(g) for g in seeds], "pool": [len(t) for t in tops]})
    return scorer, found, rounds


# ----------------------------------------------------------------------------- plan and run


@dataclass
class RetrievalPlan:
    """Everything a retrieval needs, checked before any image is read."""

    prompts_path: str
    prompts: list
    classes: list[str]
    pool_paths: list[str]
    data: DataConfig
    splits: Any
    teacher_cfg: TeacherConfig
    teacher: Any
    kind: str
    head: Any
    """The zero-shot head over the prompts' classes: what scores the pool."""
    train_head: Any
    """What students distil: ``head``, plus ``other`` (every other ImageNet class) when ``cfg.other``."""
    review: dict | None
    search: str
    cfg: RetrieveConfig
    out: Path
    cache_dir: str
    key: str
    examples: Any = None
    """``cfg.examples`` opened: an ``ImageFolderSource`` whose folders are prompt classes, or None."""


def plan_retrieval(
    prompts: str,
    pool: str | Sequence[str],
    teacher: TeacherConfig,
    cfg: RetrieveConfig,
    out: str | os.PathLike,
    cache_dir: str = DEFAULT_CACHE_DIR,
    *,
    held_out: str | None = None,
    teacher_model=None,
) -> RetrievalPlan:
    """Read the prompts, open the pool, build the zero-shot head and choose the search; computes no image.

    Raises:
        ConfigError / DataError: a bad prompts file, a missing pool, a name no ImageNet class matches, FAISS asked
            but missing or for a label map.
    """
    from edgedistill.data.splits import build_splits
    from edgedistill.heads.label_map import OTHER, with_other
    from edgedistill.prompts import class_names, prompt_head, prompts_digest, read_prompts
    from edgedistill.teachers import create_teacher

    plist = read_prompts(prompts)
    paths = [str(Path(p).expanduser().resolve()) for p in ([pool] if isinstance(pool, (str, os.PathLike)) else pool)]
    if not paths:
        raise ConfigError("retrieve needs a pool: a folder, a .tar or a folder of .tar shards of unlabeled images")
    data = DataConfig(dataset="pool", unlabeled=paths, prompts=str(prompts), held_out=held_out, val_fraction=0.0)
    splits = build_splits(data)
    model = teacher_model if teacher_model is not None else create_teacher(teacher, cache_dir)
    if getattr(model, "has_text", False):
        kind = "text"
    elif model.num_classes:
        kind = "label_map"
    else:
        raise ConfigError(f"Teacher {teacher.describe()} has neither a text tower nor class logits: nothing scores prompts")
    if cfg.label_map is not None and kind != "label_map":
        raise ConfigError(f"retrieve.label_map={cfg.label_map!r} is for ImageNet-classifier teachers; "
                          f"{teacher.describe()} is scored by its text head")
    if cfg.other and kind == "text":
        raise ConfigError(f"retrieve.other adds an {OTHER!r} class the text head cannot score (there is no prompt for "
                          "'anything else'); set retrieve.other 0, or use an ImageNet-classifier teacher")
    if cfg.other and OTHER in [c.name.lower() for c in plist]:
        raise ConfigError(f"Class {OTHER!r} is in the prompts and retrieve.other adds another; rename one")
    head, review = prompt_head(kind, plist, model, templates=cfg.templates, label_map=cfg.label_map,
                               max_sense=cfg.max_sense)
    n = splits.size("unlabeled")
    if cfg.search == "faiss":
        if kind != "text":
            raise ConfigError("retrieve.search=faiss searches image embeddings with text embeddings (CLIP teachers); "
                              "a label map scores the logits, which retrieve.search=exact scans")
        _require_faiss()
        search = "faiss"
    elif cfg.search == "auto" and kind == "text" and n >= cfg.faiss_min_pool and _faiss_available():
        search = "faiss"
    else:
        search = "exact"
    examples = open_examples(cfg.examples, class_names(plist)) if cfg.examples is not None else None
    classes = class_names(plist) + ([OTHER] if cfg.other else [])
    identities = [splits.sources[k].identity() for k in splits.sources_of("unlabeled")]
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("search", "faiss_min_pool")}  # same images either way
    key = hashlib.sha256(json.dumps(storage.jsonable(
        {"format": FORMAT, "prompts": prompts_digest(plist), "pool": identities, "teacher": model.fingerprint,
         "settings": settings, "examples": examples.identity() if examples else None}), sort_keys=True).encode()).hexdigest()
    return RetrievalPlan(str(prompts), plist, classes, paths, data, splits, teacher, model, kind, head,
                         with_other(head) if cfg.other else head, review, search, cfg, Path(out), str(cache_dir), key,
                         examples)


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def finished_retrieval(out: str | os.PathLike) -> dict | None:
    """The record of a finished retrieval in ``out`` (``retrieval.json`` beside its ``manifest.csv``), or None."""
    out = Path(out)
    if (out / "retrieval.json").is_file() and (out / "manifest.csv").is_file():
        record = storage.read_json(out / "retrieval.json")
        return record if isinstance(record, dict) and record.get("format") == FORMAT else None
    return None


def run_retrieval(plan: RetrievalPlan, *, num_workers: int = 2, log: Callable[[str], None] = say) -> dict:
    """Cache the pool's teacher outputs, select each class's images, write the manifest, head and contact sheet.

    A finished retrieval of the same key (prompts, pool, teacher, settings) in ``plan.out`` is reused as it is,
    hand-edited ``manifest.csv`` included.

    Returns:
        The ``retrieval.json`` record.
    """
    from edgedistill.cache import ensure_cache
    from edgedistill.heads import save_head
    from edgedistill.heads.label_map import format_review

    out, cfg = plan.out, plan.cfg
    done = finished_retrieval(out)
    if done is not None and done.get("key") == plan.key:
        log(f"reusing the retrieval in {out} (same prompts, pool, teacher and settings; delete it to retrieve again)")
        return done
    t0 = time.perf_counter()
    (out / "retrieval.json").unlink(missing_ok=True)  # an older retrieval's record must not vouch for a half-written one
    names = [p.name for p in plan.prompts]
    if plan.review is not None:
        text = format_review(plan.review)
        storage.write_json(out / "label_map_review.json", plan.review)
        storage.write_text(out / "label_map_review.txt", text + "\n")
        log("label map built from the class names (review it; saved as label_map_review.txt):\n" + text)
    if plan.kind == "label_map":
        storage.write_json(out / "label_map.json", dict(zip(plan.classes, plan.train_head.groups)))
    save_head(plan.train_head, out / "head", extra={"classes": plan.classes, "prompts": plan.prompts_path})

    keys = plan.splits.sources_of("unlabeled")
    caches = ensure_cache(plan.data, plan.teacher_cfg, "unlabeled", plan.cache_dir, teacher=plan.teacher,
                          splits=plan.splits, num_workers=num_workers)
    pool = PoolRows(keys, caches, plan.splits.sources)
    head = Scorer(plan.head, plan.kind)
    k = cfg.candidates or 4 * cfg.top_k
    t_search = time.perf_counter()
    found = (faiss_search(pool, head, k + _PAD, log) if plan.search == "faiss" else exact_search(pool, head, k + _PAD))
    first = [{int(g): r + 1 for r, g in enumerate(ids)} for ids in found]  # rank by the head alone
    examples = load_examples(plan, num_workers) if plan.examples is not None else None
    scorer, found, feedback = refine(pool, head, found, examples, cfg, k + _PAD)
    t_search = time.perf_counter() - t_search
    came_by = "re-ranking" if cfg.rerank else "the example images"

    kept: list[list[Kept]] = []
    per_class: dict[str, dict] = {}
    for c, ids in enumerate(found):
        drops: Counter = Counter()
        if examples is not None and examples.sha256:  # the examples themselves are not results
            same = np.array([pool.content_sha256(int(g)) in examples.sha256 for g in ids], bool)
            if same.any():
                drops["one of the example images"] = int(same.sum())
                ids = ids[~same]
        x = pool.rows_of(scorer.arrays, ids)
        s = scorer.scores(x)
        order = np.lexsort((ids, -s[:, c]))[:k]  # rank order: score, then pool order (ties broken the same way)
        emb = None
        if cfg.dedup is not None:
            emb = l2_normalize(x["embedding"][order] if "embedding" in x else pool.rows("embedding", ids[order]))
        rows, more = select_class(c, names, ids[order], s[order], emb, cfg)
        drops.update(more)
        if isinstance(scorer, Query):  # say what the query alone gave and what the centroid added
            at = {int(g): j for j, g in enumerate(ids)}
            s0 = head.scores({a: v for a, v in x.items() if a in head.arrays})[:, c]
            margin = scorer.margins(x["embedding"])[:, c]
            for r in rows:
                j, r0 = at[r.gid], first[c].get(r.gid)
                r.why += f"; query {s0[j]:.3f} + {cfg.rerank_weight:g} x centroid margin {margin[j]:.3f}"
                r.why += (f"; came in through {came_by} (query alone: rank {r0 or f'> {k + _PAD}'})"
                          if r0 is None or r0 > cfg.top_k else f"; query alone: rank {r0}")
        kept.append(rows)
        per_class[names[c]] = {"candidates": int(len(order)), "drops": dict(drops),
                               "came_in_by_refinement": sum(1 for r in rows if "came in through" in r.why)}
    cap, capped = apply_balance(kept, cfg.balance)
    if cfg.other:
        below = cfg.other_below if cfg.other_below is not None else cfg.min_score
        other = draw_other(pool, head, names, cfg.other, below, {r.gid for k_ in kept for r in k_}, cfg.seed)
        if len(other) < cfg.other:
            log(f"warning: only {len(other)} pool images score below {below:g} for every class; 'other' has "
                f"{len(other)} of the {cfg.other} asked")
        kept.append(other)
        per_class[plan.classes[-1]] = {"candidates": int(pool.valid.sum()), "drops": {}}
    for c, name in enumerate(plan.classes):
        rows = kept[c]
        if c < len(capped) and capped[c]:
            per_class[name]["drops"]["balance cap"] = capped[c]
        per_class[name].update(kept=len(rows), score_max=round(rows[0].score, 4) if rows else None,
                               score_min=round(min(r.score for r in rows), 4) if rows else None)
        if not rows:
            log(f"warning: class {name!r} kept no images ({per_class[name]['drops']}); look at the contact sheet, "
                "lower retrieve.min_score / margin, or add synonyms")

    write_manifest(out / "manifest.csv", pool, kept, plan.classes)
    sheet = contact_sheet(pool, kept, plan.classes, out / "contact_sheet.png", cfg.sheet_top, cfg.sheet_border)
    record = {
        "format": FORMAT, "key": plan.key, "classes": plan.classes,
        "prompts": {"path": plan.prompts_path, "classes": [{"name": p.name, "synonyms": list(p.synonyms)}
                                                           for p in plan.prompts]},
        "pool": {"paths": plan.pool_paths, "images": len(pool), "readable": int(pool.valid.sum()),
                 "sources": [{"key": k_, "n": len(plan.splits.sources[k_]), "identity": plan.splits.sources[k_].identity()}
                             for k_ in keys]},
        "teacher": {"describe": plan.teacher_cfg.describe(), "fingerprint": plan.teacher.fingerprint,
                    "config": asdict(plan.teacher_cfg)},
        "head": {"kind": plan.kind, "path": "head", "templates": cfg.templates if plan.kind == "text" else None,
                 "label_map": ("label_map.json" if plan.kind == "label_map" else None),
                 "label_map_from_names": plan.review is not None},
        "score": ("cosine to the class's text embedding" if plan.kind == "text" else "label-map probability")
                 + (f" + {cfg.rerank_weight:g} x centroid margin" if isinstance(scorer, Query) else ""),
        "query": {"examples": None if examples is None else {"path": str(plan.examples.root), "counts": examples.counts,
                                                              "identity": plan.examples.identity()},
                  "rerank": cfg.rerank, "rerank_top": cfg.rerank_top, "rerank_weight": cfg.rerank_weight,
                  "centroid_images": feedback},
        "settings": asdict(cfg), "search": plan.search, "candidates_per_class": k, "balance_cap": cap,
        "counts": {name: len(kept[c]) for c, name in enumerate(plan.classes)},
        "per_class": per_class, "kept": sum(len(k_) for k_ in kept),
        "files": {"manifest": "manifest.csv", "contact_sheet": sheet.name, "head": "head.json"},
        "search_s": round(t_search, 2), "seconds": round(time.perf_counter() - t0, 1),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    storage.write_json(out / "retrieval.json", record)  # written last: a retrieval is finished when it exists
    return record


# ----------------------------------------------------------------------------- manifest


def write_manifest(path: Path, pool: PoolRows, kept: list[list[Kept]], classes: Sequence[str]) -> None:
    """``manifest.csv``: one row per kept image, by class then rank (atomic)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(MANIFEST_COLUMNS)
    for rows in kept:
        for r in rows:
            key, index, where = pool.describe(r.gid)
            w.writerow([where, classes[r.cls], f"{r.score:.6f}", r.rank, f"{r.margin:.6f}", r.why, key, index])
    storage.write_text(path, buf.getvalue())


def read_manifest(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(retrieval.json record, rows)`` of a manifest; rows keep the CSV's order (a person may have deleted some).

    Raises:
        DataError: a missing file, a CSV without the manifest's columns, a class not in the retrieval, a row twice.
    """
    path = Path(path).expanduser()
    rec_path = path.with_name("retrieval.json")
    if not path.is_file():
        raise DataError(f"Manifest {str(path)!r} does not exist; write one with 'edgedistill retrieve'")
    if not rec_path.is_file():
        raise DataError(f"Manifest {str(path)!r} has no retrieval.json beside it (the classes and the pool it indexes); "
                        "keep the folder 'edgedistill retrieve' wrote together")
    record = storage.read_json(rec_path)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DataError(f"{rec_path} is not a retrieval record of format {FORMAT}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"Manifest {str(path)!r} cannot be read ({e})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("path", "class", "source", "index") if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"Manifest {str(path)!r} lacks column(s) {missing}; its header must be {','.join(MANIFEST_COLUMNS)}")
    rows, seen = [], {}
    for n, row in enumerate(reader, 2):
        if row["class"] not in record["classes"]:
            raise DataError(f"{path}:{n}: class {row['class']!r} is not one of the retrieval's classes {record['classes']}")
        try:
            row["index"] = int(row["index"])
        except ValueError:
            raise DataError(f"{path}:{n}: index {row['index']!r} is not an integer") from None
        where = (row["source"], row["index"])
        if where in seen:
            raise DataError(f"{path}:{n}: image {row['path']!r} is listed again (first on line {seen[where]})")
        seen[where] = n
        rows.append(row)
    return record, rows


def manifest_sources(path: str | os.PathLike) -> tuple[list[str], list]:
    """A manifest as labelled sources: the pool's sources (reopened, checked unchanged) with the manifest's classes.

    Returns:
        ``(classes, [RelabeledSource])``: one per pool source; images not in the manifest have label -1.

    Raises:
        DataError: the pool changed since the retrieval, or a row does not point at the image it names.
    """
    from edgedistill.data.sources import RelabeledSource, describe_item, pool_sources

    record, rows = read_manifest(path)
    sources = {s.key: s for s in pool_sources(record["pool"]["paths"])}
    for rec in record["pool"]["sources"]:
        src = sources.get(rec["key"])
        if src is None or storage.jsonable(src.identity()) != rec["identity"]:
            raise DataError(f"Pool source {rec['key']!r} of manifest {str(path)!r} changed since the retrieval (files "
                            "added, removed or modified); run 'edgedistill retrieve' again")
    classes = list(record["classes"])
    labels = {k: np.full(len(s), -1, dtype=np.int64) for k, s in sources.items()}
    for row in rows:
        src = sources.get(row["source"])
        if src is None or not 0 <= row["index"] < len(src) or describe_item(src, row["index"]) != row["path"]:
            raise DataError(f"Manifest {str(path)!r}: row {row['path']!r} does not match image {row['index']} of pool "
                            f"source {row['source']!r}; the manifest was edited beyond deleting rows")
        labels[row["source"]][row["index"]] = classes.index(row["class"])
    return classes, [RelabeledSource(s, classes, labels[k]) for k, s in sources.items()]


# ----------------------------------------------------------------------------- contact sheet


def contact_sheet(pool: PoolRows, kept: list[list[Kept]], classes: Sequence[str], path: Path, top: int = 8,
                  border: int = 8, tile: int = 64) -> Path:
    """A PNG grid, one row per class: its ``top`` highest-scoring images, then its ``border`` lowest kept ones.

    Each tile is captioned with its score; a person sees at a glance whether a class holds what its name says
    and where its threshold cuts.
    """
    from PIL import Image, ImageDraw

    from edgedistill.data.images import BadImageError

    label_w, cap_h, gap = 150, 14, 12
    n_cols = top + border
    width = label_w + n_cols * (tile + 2) + gap
    height = 20 + len(classes) * (tile + cap_h + 6)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((label_w, 4), f"top {top} by score", fill="black")
    draw.text((label_w + top * (tile + 2) + gap, 4), f"borderline: the {border} lowest kept", fill="black")
    for c, name in enumerate(classes):
        rows = kept[c] if c < len(kept) else []
        y = 20 + c * (tile + cap_h + 6)
        draw.text((4, y + tile // 2 - 6), f"{name[:18]} ({len(rows)})", fill="black")
        shown = [(0, r) for r in rows[:top]] + [(1, r) for r in rows[max(top, len(rows) - border):]]
        for k, (part, r) in enumerate(shown):
            col = k if part == 0 else top + (k - min(top, len(rows)))
            x = label_w + col * (tile + 2) + (gap if part else 0)
            try:
                img = pool.load(r.gid).resize((tile, tile))
            except BadImageError:
                img = Image.new("RGB", (tile, tile), "grey")
            sheet.paste(img, (x, y))
            draw.text((x + 2, y + tile), f"{r.score:.2f}", fill="black")
    with storage.atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


# ----------------------------------------------------------------------------- the command


def format_counts(record: dict) -> str:
    """Per class: kept images, score range and the main drop reasons (markdown)."""
    lines = ["| class | kept | score range | dropped |", "| --- | ---: | --- | --- |"]
    for name in record["classes"]:
        pc = record["per_class"][name]
        rng = f"{pc['score_min']:.3f} - {pc['score_max']:.3f}" if pc["kept"] else "—"
        drops = ", ".join(f"{k} {v}" for k, v in sorted(pc["drops"].items(), key=lambda kv: -kv[1])) or "—"
        lines.append(f"| {name} | {pc['kept']} | {rng} | {drops} |")
    return "\n".join(lines)


def retrieve_command(
    prompts: str,
    pool: str | list[str],
    teacher: TeacherConfig = TeacherConfig(),
    retrieve: RetrieveConfig = RetrieveConfig(),
    out: str = "runs/retrieve",
    cache_dir: str = DEFAULT_CACHE_DIR,
    num_workers: int = 2,
) -> None:
    """Retrieve each prompt class's images from an unlabeled pool: a manifest (a labelled dataset) and a contact sheet.

    Args:
        prompts: prompts file: one class per line, ``name: synonym, synonym``; ``#`` comments.
        pool: unlabeled images: a folder, a .tar, a folder of webdataset shard tars, or a list of them.
        teacher: the teacher scoring the images (CLIP: text head; ImageNet classifier: label map).
        retrieve: selection, search and contact-sheet settings.
        out: output folder (manifest.csv, retrieval.json, head, contact_sheet.png, label map review).
        cache_dir: teacher-output cache root (the pool is cached once; a FAISS index is saved beside it).
        num_workers: image-decoding workers while caching.
    """
    plan = plan_retrieval(prompts, pool, teacher, retrieve, out, cache_dir)
    record = run_retrieval(plan, num_workers=num_workers)
    print(format_counts(record))
    print(f"{record['kept']} images kept from a pool of {record['pool']['images']} ({record['search']} search); "
          f"score: {record['score']}")
    print(f"manifest: {Path(out) / 'manifest.csv'}   contact sheet: {Path(out) / record['files']['contact_sheet']}")
    target = "embedding" if record["head"]["kind"] == "text" else "logits"
    print(f"train on it: edgedistill train --data.dataset manifest --data.root {Path(out) / 'manifest.csv'} "
          f"--data.train_labels false --train.target {target} --train.head {record['head']['kind']} "
          f"--train.head_path {Path(out) / 'head'}")


__all__ = ["Kept", "PoolRows", "RetrievalPlan", "Scorer", "apply_balance", "contact_sheet", "draw_other",
           "exact_search", "faiss_index", "faiss_search", "finished_retrieval", "format_counts", "manifest_sources",
           "plan_retrieval", "read_manifest", "retrieve_command", "run_retrieval", "select_class", "write_manifest"]
