"""A retrieval planned (everything checked before any image is read) and run (cache, search, refine, select,
write)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgedistill import storage
from edgedistill.cache import ensure_cache
from edgedistill.config import DEFAULT_CACHE_DIR, DataConfig, RetrieveConfig, TeacherConfig, asdict
from edgedistill.console import say
from edgedistill.data.splits import build_splits
from edgedistill.deploy.runtime import l2_normalize
from edgedistill.errors import ConfigError
from edgedistill.heads import save_head, zero_shot_kind
from edgedistill.heads.label_map import OTHER, format_review, with_other
from edgedistill.heads.zero_shot import prompt_head
from edgedistill.prompts import class_names, prompts_digest, read_prompts
from edgedistill.retrieve.manifest import FORMAT, write_manifest
from edgedistill.retrieve.pool import PoolRows
from edgedistill.retrieve.refine import load_examples, open_examples, refine
from edgedistill.retrieve.scoring import Query, Scorer
from edgedistill.retrieve.search import _PAD, _faiss_available, _require_faiss, exact_search, faiss_search
from edgedistill.retrieve.select import Kept, apply_balance, draw_other, select_class
from edgedistill.retrieve.sheet import contact_sheet
from edgedistill.teachers import create_teacher


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
    plist = read_prompts(prompts)
    examples = open_examples(cfg.examples, class_names(plist)) if cfg.examples is not None else None
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
         "settings": settings, "examples": examples.identity() if examples else None}), sort_keys=True).encode()).hexdigest()
    return RetrievalPlan(str(prompts), plist, classes, paths, data, splits, teacher, model, kind, head,
                         with_other(head) if cfg.other else head, review, search, cfg, Path(out), str(cache_dir), key,
                         examples)


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
        if isinstance(scorer, Query):  # say what the query alone gave and what the neighbours added
            at = {int(g): j for j, g in enumerate(ids)}
            s0 = head.scores({a: v for a, v in x.items() if a in head.arrays})[:, c]
            margin = scorer.margins(x["embedding"])[:, c]
            for r in rows:
                j, r0 = at[r.gid], first[c].get(r.gid)
                r.why += f"; query {s0[j]:.3f} + {cfg.rerank_weight:g} x neighbour margin {margin[j]:.3f}"
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
                 + (f" + {cfg.rerank_weight:g} x neighbour margin" if isinstance(scorer, Query) else ""),
        "query": {"examples": None if examples is None else {"path": str(plan.examples.root), "counts": examples.counts,
                                                              "identity": plan.examples.identity()},
                  "rerank": cfg.rerank, "rerank_top": cfg.rerank_top, "rerank_weight": cfg.rerank_weight,
                  "positives": feedback},
        "settings": asdict(cfg), "search": plan.search, "candidates_per_class": k, "balance_cap": cap,
        "counts": {name: len(kept[c]) for c, name in enumerate(plan.classes)},
        "per_class": per_class, "kept": sum(len(k_) for k_ in kept),
        "files": {"manifest": "manifest.csv", "contact_sheet": sheet.name, "head": "head.json"},
        "search_s": round(t_search, 2), "seconds": round(time.perf_counter() - t0, 1),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    storage.write_json(out / "retrieval.json", record)  # written last: a retrieval is finished when it exists
    return record
