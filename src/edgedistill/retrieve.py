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
from edgedistill.cache import ensure_cache
from edgedistill.config import DEFAULT_CACHE_DIR, DataConfig, RetrieveConfig, TeacherConfig, asdict
from edgedistill.console import say
from edgedistill.data.images import BadImageError
from edgedistill.data.manifest import MANIFEST_COLUMNS, RETRIEVAL_FORMAT
from edgedistill.data.sources import describe_item
from edgedistill.data.splits import build_splits
from edgedistill.deploy.runtime import l2_normalize
from edgedistill.errors import ConfigError
from edgedistill.heads import save_head, zero_shot_kind
from edgedistill.heads.label_map import OTHER, format_review, with_other
from edgedistill.heads.zero_shot import prompt_head
from edgedistill.prompts import class_names, prompts_digest, read_prompts
from edgedistill.teachers import create_teacher

FORMAT = RETRIEVAL_FORMAT
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

    def chunks(self, array: str) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(first global id, float32 [S, F], valid [S])`` for each cache shard of ``array`` (embedding or logits)."""
        for s, cache in enumerate(self.caches):
            local = 0
            for part in getattr(cache, array).parts:
                n = len(part)
                yield int(self.offsets[s]) + local, np.asarray(part, dtype=np.float32), cache.valid[local:local + n]
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

    def describe(self, gid: int) -> tuple[str, int, str]:
        """``(source key, index, path)`` of a global id; the path is a file or ``<tar>::<member>``."""
        s, i = self.locate(gid)
        return self.keys[s], i, describe_item(self.sources[s], i)

    def load(self, gid: int):
        s, i = self.locate(gid)
        return self.sources[s].load(i)


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
    def num_classes(self) -> int:
        return int(self.head.num_classes)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "text":
            return l2_normalize(x) @ self._text.T  # [n, C] cosines
        import torch

        with torch.no_grad():
            return torch.exp(self.head.float()(torch.from_numpy(np.ascontiguousarray(x)))).numpy()  # [n, C] probabilities


# ----------------------------------------------------------------------------- search


def _merge_topk(best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best of two candidate sets, by (score desc, id asc)."""
    all_s, all_i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
    order = np.lexsort((all_i, -all_s), axis=1)[:, :k]
    return np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)


def exact_search(pool: PoolRows, scorer: Scorer, k: int) -> list[np.ndarray]:
    """Per class, the global ids of its k highest-scoring readable images: a running top-k over the cache shards.

    Returns:
        C arrays of global ids (at most k each; fewer when the pool has fewer readable images).
    """
    C = scorer.num_classes
    best_s, best_i = np.zeros((C, 0), np.float32), np.zeros((C, 0), np.int64)
    for start, x, valid in pool.chunks(scorer.array):
        s = scorer(x)  # [S, C]
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
    plist = read_prompts(prompts)
    paths = [str(Path(p).expanduser().resolve()) for p in ([pool] if isinstance(pool, (str, os.PathLike)) else pool)]
    if not paths:
        raise ConfigError("retrieve needs a pool: a folder, a .tar or a folder of .tar shards of unlabeled images")
    data = DataConfig(dataset="pool", unlabeled=paths, prompts=str(prompts), held_out=held_out, val_fraction=0.0)
    splits = build_splits(data)
    model = teacher_model if teacher_model is not None else create_teacher(teacher, cache_dir)
    kind = zero_shot_kind(model)  # the one rule: text for CLIP teachers, label_map for ImageNet classifiers
    if kind not in ("text", "label_map"):
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
    classes = class_names(plist) + ([OTHER] if cfg.other else [])
    identities = [splits.sources[k].identity() for k in splits.sources_of("unlabeled")]
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("search", "faiss_min_pool")}  # same images either way
    key = hashlib.sha256(json.dumps(storage.jsonable(
        {"format": FORMAT, "prompts": prompts_digest(plist), "pool": identities, "teacher": model.fingerprint,
         "settings": settings}), sort_keys=True).encode()).hexdigest()
    return RetrievalPlan(str(prompts), plist, classes, paths, data, splits, teacher, model, kind, head,
                         with_other(head) if cfg.other else head, review, search, cfg, Path(out), str(cache_dir), key)


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
    scorer = Scorer(plan.head, plan.kind)
    k = cfg.candidates or 4 * cfg.top_k
    t_search = time.perf_counter()
    found = (faiss_search(pool, scorer, k + _PAD, log) if plan.search == "faiss" else exact_search(pool, scorer, k + _PAD))
    t_search = time.perf_counter() - t_search

    kept: list[list[Kept]] = []
    per_class: dict[str, dict] = {}
    for c, ids in enumerate(found):
        x = pool.rows(scorer.array, ids)
        s = scorer(x)
        order = np.lexsort((ids, -s[:, c]))[:k]  # rank order: score, then pool order (ties broken the same way)
        emb = None
        if cfg.dedup is not None:
            emb = l2_normalize(x[order] if scorer.array == "embedding" else pool.rows("embedding", ids[order]))
        rows, drops = select_class(c, names, ids[order], s[order], emb, cfg)
        kept.append(rows)
        per_class[names[c]] = {"candidates": int(len(order)), "drops": dict(drops)}
    cap, capped = apply_balance(kept, cfg.balance)
    if cfg.other:
        below = cfg.other_below if cfg.other_below is not None else cfg.min_score
        other = draw_other(pool, scorer, names, cfg.other, below, {r.gid for k_ in kept for r in k_}, cfg.seed)
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
        "score": "cosine to the class's text embedding" if plan.kind == "text" else "label-map probability",
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


# ----------------------------------------------------------------------------- contact sheet


def contact_sheet(pool: PoolRows, kept: list[list[Kept]], classes: Sequence[str], path: Path, top: int = 8,
                  border: int = 8, tile: int = 64) -> Path:
    """A PNG grid, one row per class: its ``top`` highest-scoring images, then its ``border`` lowest kept ones.

    Each tile is captioned with its score; a person sees at a glance whether a class holds what its name says
    and where its threshold cuts.
    """
    from PIL import Image, ImageDraw

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
           "exact_search", "faiss_index", "faiss_search", "finished_retrieval", "format_counts",
           "plan_retrieval", "retrieve_command", "run_retrieval", "select_class", "write_manifest"]
