"""Zero-label retrieval precision: how many of the images retrieved for 'airplane' and 'ship' are airplanes and ships.

Pools are cut from the CIFAR-10 training images (../shared/data, unpacked to ~/.cache/edgedistill-data/train):
``--per-class`` photos of each of the 10 classes (8 of them distractors), flat file names, labels kept apart and
used only for scoring. Each class's 5,000 images are shuffled once (seed 0) and cut into disjoint blocks of
``per_class + examples``; cut ``tune`` takes block 0, cut ``report`` block 1. The defaults of re-ranking were set
on ``tune`` only; the figures in docs/benchmarks.md come from ``report``. A block's last ``--examples`` images of a
target class are its example images: from outside the pool.

Teacher: the offline EfficientNet-Lite0 (ONNX Runtime, 96 px); the label map is built from the class names
(WordNet) and the settings are ``edgedistill retrieve``'s defaults but for these:

    names       the prompts' names only (retrieve.rerank 0)
    rerank      + re-ranking (retrieve.rerank, rerank_top, rerank_weight as given; default: the config's)
    examples    + 5 example images per class (retrieve.examples), no re-ranking
    both        + examples and re-ranking
    synonyms    the synonyms the label map review suggests ('airplane: warplane', 'ship: boat'), no re-ranking
    synonyms+rerank

Reported per setting and class: precision@k (k = 25, 50, 100) of the ranked manifest against the hidden labels,
how many kept images came in through re-ranking or the examples, and the retrieval's time. Stage ``speed``
times ``retrieve`` on a pool of 100,000 cached images (see :func:`speed`).

    python benchmarks/retrieval.py --suite precision --cut report            # ~2 min on 2 cores, cache included
    python benchmarks/retrieval.py --suite precision --cut tune --rerank-top 10
    python benchmarks/retrieval.py --suite precision --stages ceiling         # what the embedding space allows
    python benchmarks/retrieval.py --suite precision --stages speed           # the 100k-image timing
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("EDGEDISTILL_NO_PROGRESS", "1")

from edgedistill import storage  # noqa: E402
from edgedistill.config import RetrieveConfig  # noqa: E402
from retrieval import _cifar_files, _log, teacher_cfg  # noqa: E402 - the issue-10 benchmark's teacher and images

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["airplane", "ship"]
PROMPTS = {"names": "airplane\nship\n", "synonyms": "airplane: warplane\nship: boat\n"}
SETTINGS = {  # name: (prompts, examples, re-rank)
    "names": ("names", False, False), "rerank": ("names", False, True), "examples": ("names", True, False),
    "both": ("names", True, True), "synonyms": ("synonyms", False, False), "synonyms+rerank": ("synonyms", False, True),
}
CUTS = ("tune", "report")
KS = (10, 25, 50, 100)


def prepare(work: Path, cut: str, per_class: int, n_examples: int) -> dict:
    """The cut's pool (flat symlinks), example folders and hidden labels; idempotent for the same settings."""
    settings = {"cut": cut, "per_class": per_class, "examples": n_examples}
    done = work / "prepared.json"
    if done.is_file() and storage.read_json(done)["settings"] == settings:
        return storage.read_json(done)
    pool_dir, ex_dir = work / f"pool-{cut}", work / f"examples-{cut}"  # source keys name cache folders: one per cut
    if pool_dir.exists():
        sys.exit(f"{work} holds another preparation; delete it or use another --work")
    block = CUTS.index(cut)
    size = per_class + n_examples
    pool, labels, examples = [], {}, {}
    for cls, files in _cifar_files().items():
        files = list(files)
        random.Random(0).shuffle(files)  # one fixed shuffle per class: cuts are disjoint blocks of it
        mine = files[block * size:(block + 1) * size]
        pool += [(f, cls) for f in mine[:per_class]]
        if cls in TARGETS:
            examples[cls] = mine[per_class:]
    random.Random(1).shuffle(pool)
    pool_dir.mkdir(parents=True)
    for i, (f, cls) in enumerate(pool):  # flat names: the path says nothing of the class
        (pool_dir / f"{i:05d}.jpg").symlink_to(f)
        labels[f"{i:05d}.jpg"] = cls
    for cls, files in examples.items():
        (ex_dir / cls).mkdir(parents=True)
        for f in files:
            (ex_dir / cls / f.name).symlink_to(f)
    for name, text in PROMPTS.items():
        storage.write_text(work / f"prompts-{name}.txt", text)
    storage.write_json(work / "hidden_labels.json", labels)
    record = {"settings": settings, "pool": len(pool), "examples": {c: len(v) for c, v in examples.items()}}
    storage.write_json(done, record)
    return record


def retrieve_cfg(args: argparse.Namespace, examples: Path | None, rerank: bool) -> RetrieveConfig:
    d = RetrieveConfig()
    return RetrieveConfig(top_k=args.top_k, search="exact", examples=str(examples) if examples else None,
                          rerank=(args.rerank if args.rerank is not None else max(d.rerank, 1)) if rerank else 0,
                          rerank_top=args.rerank_top or d.rerank_top,
                          rerank_weight=args.rerank_weight if args.rerank_weight is not None else d.rerank_weight,
                          rerank_center=d.rerank_center and not args.no_center)


def run_setting(work: Path, name: str, args: argparse.Namespace, teacher) -> dict:
    """One retrieval of the cut's pool and its precision@k per target class against the hidden labels."""
    from edgedistill.data.manifest import read_manifest
    from edgedistill.retrieve import plan_retrieval, run_retrieval

    prompts, with_examples, rerank = SETTINGS[name]
    cfg = retrieve_cfg(args, work / f"examples-{args.cut}" if with_examples else None, rerank)
    plan = plan_retrieval(work / f"prompts-{prompts}.txt", work / f"pool-{args.cut}", teacher_cfg(), cfg, work / "out" / name,
                          args.cache_dir, teacher_model=teacher)
    t0 = time.perf_counter()
    record = run_retrieval(plan, num_workers=args.num_workers, log=_log)
    seconds = time.perf_counter() - t0
    labels = storage.read_json(work / "hidden_labels.json")
    _, rows = read_manifest(work / "out" / name / "manifest.csv")
    per_class = {}
    for c in TARGETS:
        mine = [r for r in rows if r["class"] == c]  # in rank order
        hits = [labels[Path(r["path"]).name] == c for r in mine]
        per_class[c] = {"kept": len(mine), "precision_at": {k: float(np.mean(hits[:k])) for k in KS if len(hits) >= k},
                        "came_in": sum("came in through" in r["why"] for r in mine),
                        "wrong": dict(sorted({t: sum(labels[Path(r["path"]).name] == t for r in mine[:100])
                                              for t in {labels[Path(r["path"]).name] for r in mine[:100]} - {c}}.items()))}
    return {"settings": {k: record["settings"][k] for k in ("top_k", "rerank", "rerank_top", "rerank_weight",
                                                              "rerank_center", "examples", "dedup")},
            "prompts": PROMPTS[prompts], "score": record["score"], "per_class": per_class,
            "label_map": {c: len(v["indices"]) for c, v in storage.read_json(
                work / "out" / name / "label_map_review.json")["classes"].items()},
            "contact_sheet": str(work / "out" / name / record["files"]["contact_sheet"]),
            "seconds": round(seconds, 2), "reused": seconds < 0.5 and record["seconds"] > seconds}


def precision(work: Path, args: argparse.Namespace) -> dict:
    from edgedistill.teachers import create_teacher

    prepared = prepare(work, args.cut, args.per_class, args.examples)
    teacher = create_teacher(teacher_cfg(), args.cache_dir)
    out = {"prepared": prepared, "settings": {}}
    for name in args.settings.split(","):
        _log(f"== {args.cut}: {name}")
        if (work / "out" / name).exists() and args.fresh:
            import shutil

            shutil.rmtree(work / "out" / name)
        out["settings"][name] = run_setting(work, name, args, teacher)
    return out


def ceiling(work: Path, args: argparse.Namespace) -> dict:
    """What the teacher's embedding space allows: precision@100 of a leave-one-out 5-nearest-neighbour ranking that
    knows every pool image's true label (positives: the class's other images; negatives: all the rest), in the same
    centered cosine space re-ranking uses. Labels are used here on purpose: it is a ceiling for positives the user
    or the feedback could give, not a retrieval."""
    from edgedistill.cache import TeacherCache
    from edgedistill.retrieve import centered
    from edgedistill.teachers import create_teacher

    prepare(work, args.cut, args.per_class, args.examples)
    pool_dir = work / f"pool-{args.cut}"
    caches = [TeacherCache(m.parent, storage.read_json(m)) for m in Path(args.cache_dir).glob(
        f"{create_teacher(teacher_cfg(), args.cache_dir).fingerprint[:16]}/pool/{pool_dir.name}/**/manifest.json")]
    if not caches:
        sys.exit(f"no teacher cache of {pool_dir}: run the precision stage first")
    cache = caches[0]
    from edgedistill.data.sources import UnlabeledImages

    labels = storage.read_json(work / "hidden_labels.json")
    y = np.array([labels[f.name] for f in UnlabeledImages(pool_dir, "ceiling").files])
    emb = np.asarray(cache.embedding[np.arange(len(cache))], np.float32)
    z = centered(emb, centered(emb, None).mean(0))
    sim = z @ z.T  # [N, N]
    np.fill_diagonal(sim, -np.inf)  # leave one out
    out = {}
    for c in TARGETS:
        def knn(cols: np.ndarray, k: int = 5) -> np.ndarray:
            s_ = sim[:, cols]
            return np.sort(np.partition(s_, s_.shape[1] - k - 1, axis=1)[:, -k - 1:], axis=1)[:, -k:].mean(1)
        score = knn(np.flatnonzero(y == c)) - knn(np.flatnonzero(y != c))  # the -inf self is never among the 5
        top = np.argsort(-score, kind="stable")
        out[c] = {f"p@{k}": float(np.mean(y[top[:k]] == c)) for k in KS}
    return out


# ----------------------------------------------------------------------------- speed


def speed(work: Path, args: argparse.Namespace) -> dict:
    """``retrieve`` on a pool of 100,000 cached images: the timing of everything after the cache.

    Teacher-computing 100,000 images with EfficientNet-Lite0 on 2 shared cores takes most of an hour, so the cache
    is written by a *synthetic* teacher: the real cache code (``cache.cache_source``: shards, manifest, valid mask,
    float16 1,280-d embeddings and 1,000 logits per image, like EfficientNet-Lite0's) over a real pool of 100,000
    image files (the CIFAR-10 training images, each linked twice), with outputs that are a fixed random projection of
    the decoded pixels. The label map from names scores its logits exactly as the real teacher's would be; what is
    timed is planning, the exact search over the cache shards, re-ranking rescans, selection, manifest and contact
    sheet, the same work at the same sizes as with the real teacher.
    """
    import torch

    from edgedistill.data.views import ViewSpec
    from edgedistill.retrieve import plan_retrieval, run_retrieval
    from edgedistill.teachers.base import Teacher, make_fingerprint

    class SyntheticTeacher(Teacher):
        """Pixels -> a fixed random projection: EfficientNet-Lite0's output sizes without its compute."""

        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.name, self.embed_dim, self.num_classes, self.class_names = "synthetic-lite0", 1280, 1000, None
            self.view = ViewSpec(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bilinear")
            self.register_buffer("proj", torch.randn(3 * 8 * 8, 1280, generator=g) / 14)
            self.register_buffer("cls", torch.randn(1280, 1000, generator=g) / 6)
            self.fingerprint = make_fingerprint(self.name, "seed0", self.view)
            self.freeze()

        def _forward(self, x):
            e = torch.relu(torch.nn.functional.adaptive_avg_pool2d(x.float(), 8).flatten(1) @ self.proj)
            return {"embedding": e, "logits": e @ self.cls}

    files = [f for fs in _cifar_files().values() for f in fs][:args.speed_images // 2]
    pool = work / f"pool{args.speed_images}"
    if not pool.is_dir():
        for part in (f"synthetic{args.speed_images}-a", f"synthetic{args.speed_images}-b"):
            (pool / part).mkdir(parents=True)
            for i, f in enumerate(files):
                (pool / part / f"{i:05d}.jpg").symlink_to(f)  # own source keys: not a real pool's
    storage.write_text(work / "prompts.txt", PROMPTS["names"])
    teacher = SyntheticTeacher()
    out = {}
    for name, rerank in (("names", 0), ("rerank", max(RetrieveConfig().rerank, 1))):
        cfg = RetrieveConfig(top_k=args.top_k, search="exact", rerank=rerank)
        plan = plan_retrieval(work / "prompts.txt", [str(p) for p in sorted(pool.iterdir())], teacher_cfg(), cfg,
                              work / "out" / name, args.cache_dir, teacher_model=teacher)
        t0 = time.perf_counter()
        record = run_retrieval(plan, num_workers=args.num_workers, log=_log)  # the first one caches the pool
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeat):
            import shutil

            shutil.rmtree(work / "out" / name)
            t0 = time.perf_counter()
            run_retrieval(plan_retrieval(work / "prompts.txt", [str(p) for p in sorted(pool.iterdir())], teacher_cfg(), cfg,
                                         work / "out" / name, args.cache_dir, teacher_model=teacher),
                          num_workers=args.num_workers, log=_log)
            times.append(time.perf_counter() - t0)
        out[name] = {"images": record["pool"]["images"], "first_s": round(first, 1),
                     "retrieve_s": [round(t, 2) for t in times], "median_s": round(float(np.median(times)), 2),
                     "search_s": record["search_s"]}
    return out


# ----------------------------------------------------------------------------- report


def report(res: dict) -> str:
    lines = []
    if "precision" in res:
        p = res["precision"]
        lines += [f"Cut `{res['cut']}`: a pool of {p['prepared']['pool']:,} CIFAR-10 training images "
                  f"({res['per_class']} per class, 10 classes), prompts for airplane and ship; examples: "
                  f"{p['prepared']['examples']} per class from outside the pool. Precision@k of each ranked manifest "
                  "against the hidden labels.", "",
                  "| setting | class | label-map classes | " + " | ".join(f"p@{k}" for k in KS)
                  + " | came in by re-ranking / examples | top-100 mistakes | seconds |",
                  "|---|---|---:|" + "---:|" * len(KS) + "---:|---|---:|"]
        for name, s in p["settings"].items():
            for c, pc in s["per_class"].items():
                pa = {int(k): v for k, v in pc["precision_at"].items()}
                lines.append(f"| {name} | {c} | {s['label_map'][c]} | "
                             + " | ".join(f"{pa[k]:.2f}" if k in pa else "—" for k in KS)
                             + f" | {pc['came_in']} | " + (", ".join(f"{t} {n}" for t, n in pc["wrong"].items()) or "—")
                             + f" | {s['seconds']:.1f} |")
        first = next(iter(p["settings"].values()))["settings"]
        lines += ["", f"Retrieval settings: top_k {first['top_k']}, dedup {first['dedup']}; re-ranking (where on): "
                      + ", ".join(f"{n}: rounds {s['settings']['rerank']}, top {s['settings']['rerank_top']}, weight "
                                  f"{s['settings']['rerank_weight']}, centered {s['settings']['rerank_center']}"
                                  for n, s in p["settings"].items()
                                  if s["settings"]["rerank"] or s["settings"]["examples"]) + "."]
    if "ceiling" in res:
        lines += ["", f"Ceiling of the teacher's embedding space on cut `{res['cut']}` (leave-one-out 5-NN with every "
                  "pool image's true label, centered cosines):", "",
                  "| class | " + " | ".join(f"p@{k}" for k in KS) + " |", "|---|" + "---:|" * len(KS)]
        for c, v in res["ceiling"].items():
            lines.append(f"| {c} | " + " | ".join(f"{v[f'p@{k}']:.2f}" for k in KS) + " |")
    if "speed" in res:
        lines += ["", "| pool (cached) | setting | retrieve, median s | runs (s) | search s |", "|---:|---|---:|---|---:|"]
        for name, s in res["speed"].items():
            lines.append(f"| {s['images']:,} | {name} | {s['median_s']:.2f} | {', '.join(map(str, s['retrieve_s']))} | "
                         f"{s['search_s']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=None, help="working folder; default runs/bench_retrieval_precision/<cut>")
    p.add_argument("--stages", default="precision", help="comma-separated subset of precision,ceiling,speed")
    p.add_argument("--cut", choices=CUTS, default="report", help="tune: the pool the defaults were set on; report")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated subset of {','.join(SETTINGS)}")
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--examples", type=int, default=5)
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--rerank", type=int, default=None, help="re-ranking rounds where on (default: the config's)")
    p.add_argument("--rerank-top", type=int, default=None)
    p.add_argument("--rerank-weight", type=float, default=None)
    p.add_argument("--no-center", action="store_true", help="retrieve.rerank_center false (cosines from the origin)")
    p.add_argument("--repeat", type=int, default=3, help="speed: timed runs after the first")
    p.add_argument("--speed-images", type=int, default=100_000, help="speed: pool size (CIFAR-10 files linked twice)")
    p.add_argument("--fresh", action="store_true", help="redo finished retrievals (else reused)")
    p.add_argument("--cache-dir", default=str(Path("~/.cache/edgedistill").expanduser()))
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="results base path (.json/.md); default "
                   "benchmarks/results/retrieval_precision-<cut> (report cut) or <work>/results")
    args = p.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in stages if s not in ("precision", "ceiling", "speed")] + [s for s in args.settings.split(",") if s not in SETTINGS]
    if bad:
        p.error(f"unknown stage(s) or setting(s) {bad}")
    work = (args.work or REPO / "runs" / "bench_retrieval_precision" / args.cut).resolve()
    res = {"command": "python benchmarks/retrieval.py --suite precision " + " ".join(sys.argv[1:] if argv is None else argv),
           "cut": args.cut, "per_class": args.per_class}
    t0 = time.perf_counter()
    if "precision" in stages:
        res["precision"] = precision(work, args)
    if "ceiling" in stages:
        res["ceiling"] = ceiling(work, args)
    if "speed" in stages:
        res["speed"] = speed(work.parent / "speed", args)
    from edgedistill.deploy.bench import machine_info

    res["machine"], res["seconds"] = machine_info(), round(time.perf_counter() - t0, 1)
    text = report(res)
    print(text)
    out = args.out or (REPO / "benchmarks" / "results" / f"retrieval_precision-{args.cut}-{'+'.join(stages)}"
                       if args.cut == "report" else work / "results")
    storage.write_text(out.with_suffix(".md"), f"Command: `{res['command']}`\n\n{text}\n")
    storage.write_json(out.with_suffix(".json"), res)
    _log(f"wrote {out.with_suffix('.json')} and .md")
    return res


if __name__ == "__main__":
    main()
