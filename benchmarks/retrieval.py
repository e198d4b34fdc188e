"""Zero-label retrieval, measured offline: find six CIFAR-10 animal classes, given only as names, in a mixed pool.

Pool: the CIFAR-10 training images (../shared/data, unpacked to ~/.cache/edgedistill-data/train) minus a
held-out carve, mixed with the 70,000 Fashion-MNIST images (Debian ``dataset-fashion-mnist``, converted
to RGB PNGs in webdataset shard tars) as out-of-domain distractors. Target: the classes of a prompts
file of names (bird, cat, deer, dog, frog, horse; ImageNet-1k has no deer, so "deer" carries the synonym
"antelope", which the label map review shows). Teacher: the offline EfficientNet-Lite0 (ONNX Runtime,
96 px) with a label map built from the names alone (WordNet). Labels are used only for scoring.

Reported: retrieval precision and recall per class against the hidden labels (and precision at smaller
k, which the ranked manifest gives for free), the share of Fashion-MNIST distractors and of off-target
CIFAR-10 classes among the retrieved images; then the held-out accuracy (500 images per target class,
carved from the CIFAR-10 training images before the pool is made) of three students trained by response
KD on the label-map head: (a) on the retrieved set, (b) on the whole pool, (c) on a random pool subset of
the size of (a), all for the same number of optimizer steps (or ``--pool-epochs`` for (b)), and the
teacher's own zero-label accuracy beside them, with each one's training time.

Stages, each resumable and skipped when done (rerun the same command after a kill)::

    prepare   the pool (symlinks + Fashion-MNIST shards), the held-out folder, hidden labels, prompts
    cache     the teacher's outputs on the pool (the long step: ~117k images; resumes shard by shard)
    retrieve  manifest, contact sheet, label map review; precision/recall against the hidden labels
    teacher   the teacher's zero-label accuracy on the held-out images
    train     the three students (finished ones are skipped, unfinished ones resumed)
    report    the table (stdout) and JSON

    python benchmarks/retrieval.py                                   # everything (~30-40 min on 2 quiet cores)
    python benchmarks/retrieval.py --stages prepare,cache            # the teacher cache alone first
    python benchmarks/retrieval.py --limit 600 --held-out-per-class 10 --epochs 1 --top-k 40 \\
        --work runs/bench_retrieval_smoke                             # a smoke run (~2 min)

    python benchmarks/retrieval.py --suite precision [...]          # precision@k, four query settings
                                                                     # (benchmarks/retrieval_precision.py)
"""

from __future__ import annotations

import argparse
import gzip
import io
import math
import os
import random
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("EDGEDISTILL_NO_PROGRESS", "1")

from edgedistill import storage  # noqa: E402
from edgedistill.config import (DataConfig, GridConfig, GridRow, GridSections, GridTeacher, RetrieveConfig,  # noqa: E402
                                TeacherConfig, asdict)

REPO = Path(__file__).resolve().parents[1]
CIFAR_DIR = Path("~/.cache/edgedistill-data/train").expanduser()
CIFAR_TAR = REPO.parent / "shared" / "data" / "cifar10-train.tar.gz"
FMNIST_DIRS = [Path("/usr/share/datasets/fashion-mnist"), Path("/work/stage/wordnet/fmnist/usr/share/datasets/fashion-mnist")]
TARGETS = ["bird", "cat", "deer", "dog", "frog", "horse"]
PROMPTS = "# the six CIFAR-10 animal classes, by name; ImageNet-1k has no deer: its synonym finds antelopes\n" \
          "bird\ncat\ndeer: antelope\ndog\nfrog\nhorse\n"
STAGES = ("prepare", "cache", "retrieve", "teacher", "train", "report")
SHARD = 10_000


def teacher_cfg() -> TeacherConfig:
    return TeacherConfig(kind="efficientnet_lite0", image_size=96, batch_size=128, runtime="onnxruntime")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- prepare


def _cifar_files() -> dict[str, list[Path]]:
    if not CIFAR_DIR.is_dir():
        if not CIFAR_TAR.is_file():
            sys.exit(f"CIFAR-10 training images missing: neither {CIFAR_DIR} nor {CIFAR_TAR}")
        _log(f"unpacking {CIFAR_TAR} into {CIFAR_DIR.parent}")
        with tarfile.open(CIFAR_TAR) as tf:
            tf.extractall(CIFAR_DIR.parent, filter="data")
    return {c.name: sorted(c.glob("*.jpg")) for c in sorted(CIFAR_DIR.iterdir()) if c.is_dir()}


def _fmnist_images(folder: Path | None) -> np.ndarray:
    """All 70,000 Fashion-MNIST images, uint8 [N, 28, 28], read from the gzipped idx files (16-byte header)."""
    found = [d for d in ([folder] if folder else FMNIST_DIRS) if (d / "train-images-idx3-ubyte.gz").is_file()]
    if not found:
        sys.exit(f"Fashion-MNIST missing: apt-get install dataset-fashion-mnist, or pass --fmnist DIR "
                 f"(looked in {', '.join(map(str, FMNIST_DIRS))})")
    parts = []
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        raw = gzip.decompress((found[0] / name).read_bytes())
        n = int.from_bytes(raw[4:8], "big")
        parts.append(np.frombuffer(raw, np.uint8, offset=16).reshape(n, 28, 28))
    return np.concatenate(parts)


def prepare(work: Path, args: argparse.Namespace) -> dict:
    """The pool, the held-out folder and the hidden labels; idempotent for the same settings."""
    from PIL import Image

    data = work / "data"
    settings = {"limit": args.limit, "held_out_per_class": args.held_out_per_class, "seed": args.seed}
    done = data / "prepared.json"
    if done.is_file() and storage.read_json(done)["settings"] == settings:
        return storage.read_json(done)
    if data.exists():
        sys.exit(f"{data} holds another preparation; delete it or use another --work")
    rng = random.Random(args.seed)
    files = _cifar_files()
    held, pool = {}, []
    for cls, fs in files.items():
        fs = list(fs)
        rng.shuffle(fs)
        k = args.held_out_per_class if cls in TARGETS else 0
        held[cls], rest = fs[:k], fs[k:]
        pool += [(f, cls) for f in rest]
    rng.shuffle(pool)
    if args.limit:
        pool = pool[:args.limit]
    labels = {}
    for cls, fs in held.items():
        for f in fs:
            dst = data / "held_out" / cls / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(f)
    (data / "pool" / "cifar10").mkdir(parents=True)
    for i, (f, cls) in enumerate(pool):  # flat names: the pool's paths say nothing of the class
        (data / "pool" / "cifar10" / f"{i:05d}.jpg").symlink_to(f)
        labels[f"{i:05d}.jpg"] = cls
    fm = _fmnist_images(args.fmnist)
    if args.limit:
        fm = fm[np.random.default_rng(args.seed).permutation(len(fm))[:args.limit]]
    (data / "pool" / "fashion_mnist").mkdir(parents=True)
    for s in range(0, len(fm), SHARD):  # webdataset-style shards: 000123.png beside 000123.cls
        with tarfile.open(data / "pool" / "fashion_mnist" / f"shard-{s // SHARD:05d}.tar", "w") as tf:
            for i in range(s, min(s + SHARD, len(fm))):
                buf = io.BytesIO()
                Image.fromarray(fm[i]).convert("RGB").save(buf, format="PNG")
                for name, payload in ((f"{i:06d}.png", buf.getvalue()), (f"{i:06d}.cls", b"fashion_mnist")):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    storage.write_text(work / "prompts.txt", PROMPTS)
    storage.write_json(data / "hidden_labels.json", labels)  # outside the pool: used only for scoring
    record = {"settings": settings, "pool": {"cifar10": len(pool), "fashion_mnist": int(len(fm))},
              "pool_per_class": {c: sum(1 for _, k in pool if k == c) for c in files},
              "held_out": {c: len(v) for c, v in held.items() if v}}
    storage.write_json(done, record)
    return record


# ----------------------------------------------------------------------------- retrieve and score


def pool_data(work: Path, held_out: bool = True, max_unlabeled: int | None = None) -> DataConfig:
    data = work / "data"
    return DataConfig(dataset="pool", unlabeled=[str(data / "pool" / "cifar10"), str(data / "pool" / "fashion_mnist")],
                      prompts=str(work / "prompts.txt"), held_out=str(data / "held_out") if held_out else None,
                      val_fraction=0.0, max_unlabeled=max_unlabeled)


def retrieve_cfg(args: argparse.Namespace) -> RetrieveConfig:
    return RetrieveConfig(top_k=args.top_k, min_score=args.min_score, margin=args.margin, dedup=args.dedup,
                          balance=args.balance, search="exact", rerank=args.rerank)


def _plan(work: Path, args: argparse.Namespace):
    from edgedistill.retrieve import plan_retrieval

    d = pool_data(work)
    return plan_retrieval(work / "prompts.txt", d.unlabeled, teacher_cfg(), retrieve_cfg(args), work / "retrieve",
                          args.cache_dir)


def cache(work: Path, args: argparse.Namespace) -> dict:
    from edgedistill.cache import ensure_cache

    plan = _plan(work, args)
    t0 = time.perf_counter()
    caches = ensure_cache(plan.data, plan.teacher_cfg, "unlabeled", args.cache_dir, teacher=plan.teacher,
                          splits=plan.splits, num_workers=args.num_workers)
    return {"images": sum(len(c) for c in caches.values()), "seconds_this_run": round(time.perf_counter() - t0, 1),
            "teacher_seconds": round(sum(c.manifest["seconds"] for c in caches.values()), 1)}


def score_retrieval(work: Path, record: dict, prepared: dict) -> dict:
    """Precision and recall per target class against the hidden labels; distractor shares."""
    from edgedistill.data.manifest import read_manifest

    labels = storage.read_json(work / "data" / "hidden_labels.json")
    _, rows = read_manifest(work / "retrieve" / "manifest.csv")

    def truth(path: str) -> str:
        return "fashion_mnist" if "::" in path else labels[Path(path).name]

    per_class, ks = {}, sorted({k for k in (250, 500, 1000, record["settings"]["top_k"]) if k <= record["settings"]["top_k"]})
    for c in TARGETS:
        mine = [truth(r["path"]) for r in rows if r["class"] == c]  # in rank order
        hits = sum(t == c for t in mine)
        per_class[c] = {"kept": len(mine), "correct": hits, "precision": hits / len(mine) if mine else None,
                        "recall": hits / prepared["pool_per_class"][c],
                        "precision_at": {k: sum(t == c for t in mine[:k]) / min(k, len(mine)) for k in ks if len(mine) >= k},
                        "fashion_mnist": sum(t == "fashion_mnist" for t in mine),
                        "off_target_cifar": sum(t not in (c, "fashion_mnist") for t in mine)}
    kept = sum(p["kept"] for p in per_class.values())
    return {"per_class": per_class, "kept": kept,
            "precision": sum(p["correct"] for p in per_class.values()) / max(kept, 1),
            "recall": sum(p["correct"] for p in per_class.values()) / sum(prepared["pool_per_class"][c] for c in TARGETS),
            "fashion_mnist_share": sum(p["fashion_mnist"] for p in per_class.values()) / max(kept, 1),
            "fashion_mnist_retrieved_of_pool": sum(p["fashion_mnist"] for p in per_class.values()) / max(prepared["pool"]["fashion_mnist"], 1),
            "off_target_cifar_share": sum(p["off_target_cifar"] for p in per_class.values()) / max(kept, 1)}


def retrieve(work: Path, args: argparse.Namespace, prepared: dict) -> dict:
    from edgedistill.retrieve import run_retrieval

    plan = _plan(work, args)
    t0 = time.perf_counter()
    record = run_retrieval(plan, num_workers=args.num_workers, log=_log)
    return {"record": {k: record[k] for k in ("key", "counts", "kept", "search", "score", "settings", "per_class",
                                              "seconds")},
            "seconds_this_run": round(time.perf_counter() - t0, 1), "scores": score_retrieval(work, record, prepared)}


def teacher(work: Path, args: argparse.Namespace) -> dict:
    from edgedistill.evaluate import evaluate_teacher

    r = evaluate_teacher(pool_data(work), teacher_cfg(), head="label_map",
                         label_map=str(work / "retrieve" / "label_map.json"), split="test", cache_dir=args.cache_dir,
                         out=work / "teacher", num_workers=args.num_workers)
    h = r["heads"]["label_map"]
    return {"acc": h["acc"], "n": h["n"], "per_class": h["per_class"]}


# ----------------------------------------------------------------------------- students


def train(work: Path, args: argparse.Namespace, n_retrieved: int, n_pool: int, key: str) -> dict:
    """(a) retrieved, (b) whole pool, (c) random subset of |a|: response KD on the label-map head, equal steps.

    Run directories sit under ``runs/<retrieval key>``: other retrieval settings train new students instead of
    finding the old ones finished.
    """
    from edgedistill.pipelines.grid import run_grid_config

    B = args.batch_size
    steps = args.epochs * max(n_retrieved // B, 1)  # (a)'s optimizer steps; (c) has the same size, so the same
    pool_train = {"train_split": "unlabeled"}
    if args.pool_epochs:
        pool_train["epochs"] = args.pool_epochs
    else:  # the same number of optimizer steps (images seen) as (a)
        pool_train.update(epochs=max(1, math.ceil(steps / max(n_pool // B, 1))), max_steps=steps)
    manifest = DataConfig(dataset="manifest", root=str(work / "retrieve" / "manifest.csv"),
                          held_out=str(work / "data" / "held_out"), val_fraction=0.0, train_labels=False)
    rows = [GridRow(name="a_retrieved", data=asdict(manifest), note="the retrieved set"),
            GridRow(name="b_whole_pool", data=asdict(pool_data(work)), train=pool_train, note="every pool image"),
            GridRow(name="c_random_subset", data=asdict(pool_data(work, max_unlabeled=n_retrieved)),
                    train={"train_split": "unlabeled"}, note="a random pool subset of the retrieved set's size")]
    train_cfg = {"student": "resnet18", "student_kwargs": {"channels": [32, 64, 128, 256]}, "image_size": 32,
                 "target": "logits", "head": "label_map", "head_path": str(work / "retrieve" / "head"),
                 "train_split": "train", "epochs": args.epochs, "batch_size": B, "optimizer": "sgd", "lr": args.lr,
                 "weight_decay": 5e-4, "warmup_epochs": 0.5, "min_crop": 0.8, "num_workers": 0, "eval_test": True,
                 "seed": args.seed}
    grid = GridConfig(runs=rows, name="retrieval", out_dir=str(work / "runs" / key[:12]), cache_dir=args.cache_dir,
                      defaults=GridSections(teacher=asdict(teacher_cfg()), train=train_cfg), teacher=GridTeacher())
    results = run_grid_config(grid, source=__file__)
    out = {}
    for r in results["rows"]:
        m = storage.read_json(Path(r["run_dir"]) / "metrics.json")
        out[r["name"]] = {"test_acc": r["test_acc"], "train_s": r["train_s"], "n_train": m.get("n_train"),
                          "epochs": m.get("epochs_completed"), "steps": m.get("best_step") or m.get("global_step"),
                          "images_per_s": m.get("images_per_s"), "run_dir": r["run_dir"]}
    return {"steps_matched": not args.pool_epochs, "steps": steps, "students": out}


# ----------------------------------------------------------------------------- report


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def report(res: dict) -> str:
    s, rec = res["retrieve"]["scores"], res["retrieve"]["record"]
    cfg = rec["settings"]
    ks = sorted({int(k) for p in s["per_class"].values() for k in p["precision_at"]})
    lines = [f"Retrieval: top_k {cfg['top_k']}, min_score {cfg['min_score']}, margin {cfg['margin']}, dedup "
             f"{cfg['dedup']}, balance {cfg['balance']}; pool {res['prepare']['pool']['cifar10']:,} CIFAR-10 + "
             f"{res['prepare']['pool']['fashion_mnist']:,} Fashion-MNIST images; score: {rec['score']}", "",
             "| class | kept | precision | recall | " + " | ".join(f"precision@{k}" for k in ks)
             + " | Fashion-MNIST | other CIFAR |", "|---|---:|---:|---:|" + "---:|" * len(ks) + "---:|---:|"]
    for c, p in s["per_class"].items():
        lines.append(f"| {c} | {p['kept']:,} | {_pct(p['precision'])} | {_pct(p['recall'])} | "
                     + " | ".join(_pct(p["precision_at"].get(k, p["precision_at"].get(str(k)))) for k in ks)
                     + f" | {p['fashion_mnist']} | {p['off_target_cifar']} |")
    lines += [f"| all | {s['kept']:,} | {_pct(s['precision'])} | {_pct(s['recall'])} | " + " | ".join("" for _ in ks)
              + f" | {_pct(s['fashion_mnist_share'])} | {_pct(s['off_target_cifar_share'])} |", "",
              f"Distractors retrieved: {_pct(s['fashion_mnist_share'])} of the retrieved images are Fashion-MNIST "
              f"({_pct(s['fashion_mnist_retrieved_of_pool'])} of the Fashion-MNIST pool).", ""]
    if "train" in res:
        held = sum(res["prepare"]["held_out"].values())
        t = res["train"]
        lines += [f"Held-out accuracy on {held:,} images ({len(TARGETS)} classes, carved from the CIFAR-10 training "
                  f"images; labels used only here); students trained for "
                  + (f"the same {t['steps']:,} optimizer steps" if t["steps_matched"] else "their own epochs") + ":", "",
                  "| model | training images | held-out acc | epochs | train min |", "|---|---:|---:|---:|---:|"]
        if "teacher" in res:
            lines.append(f"| teacher EfficientNet-Lite0, label map from names (no labels) | — | "
                         f"{_pct(res['teacher']['acc'])} | — | — |")
        names = {"a_retrieved": "(a) retrieved set", "b_whole_pool": "(b) whole pool",
                 "c_random_subset": "(c) random subset, size of (a)"}
        for k, st in t["students"].items():
            lines.append(f"| {names[k]} | {st['n_train'] or 0:,} | {_pct(st['test_acc'])} | {st['epochs']} | "
                         f"{(st['train_s'] or 0) / 60:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["--suite", "precision"]:  # precision@k of airplane/ship retrieval, four settings: its own module
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import retrieval_precision

        return retrieval_precision.main(argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "bench_retrieval", help="working folder (resumable)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--out", type=Path, default=None,
                   help="results base path (.json/.md); default benchmarks/results/retrieval, or <work>/results with --limit")
    p.add_argument("--cache-dir", default=str(Path("~/.cache/edgedistill").expanduser()))
    p.add_argument("--limit", type=int, default=None, help="smoke run: at most this many CIFAR-10 and Fashion-MNIST pool images each")
    p.add_argument("--held-out-per-class", type=int, default=500)
    p.add_argument("--fmnist", type=Path, default=None, help="folder of the Fashion-MNIST .gz files")
    p.add_argument("--top-k", type=int, default=2000)
    p.add_argument("--min-score", type=float, default=0.1)
    p.add_argument("--margin", type=float, default=0.0)
    p.add_argument("--dedup", type=float, default=0.95)
    p.add_argument("--balance", type=float, default=None)
    p.add_argument("--rerank", type=int, default=0, help="retrieve.rerank rounds; 0, as when the figures in "
                   "docs/benchmarks.md were made (issue 10, before re-ranking existed)")
    p.add_argument("--epochs", type=int, default=15, help="epochs of (a) and (c); (b) gets their optimizer steps")
    p.add_argument("--pool-epochs", type=int, default=None, help="train (b) for this many full epochs instead")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        p.error(f"unknown stage(s) {bad}; valid: {', '.join(STAGES)}")
    work = args.work.resolve()
    out = args.out or (work / "results" / "retrieval" if args.limit else REPO / "benchmarks" / "results" / "retrieval")
    state_path = work / "results.json"
    res = storage.read_json(state_path) if state_path.is_file() else {}
    res.setdefault("seconds", {})
    res["command"] = "python benchmarks/retrieval.py " + " ".join(argv)

    res["prepare"] = prepare(work, args)  # idempotent: every later stage reads the pool it made
    for stage in STAGES:
        if stage not in stages:
            continue
        t0 = time.perf_counter()
        _log(f"== {stage}")
        if stage == "prepare":
            pass
        elif stage == "cache":
            res["cache"] = cache(work, args)
        elif stage == "retrieve" or (stage == "train" and "retrieve" not in res):
            res["retrieve"] = retrieve(work, args, res["prepare"])  # a finished retrieval is reused
        if stage == "teacher":
            res["teacher"] = teacher(work, args)
        elif stage == "train":
            n_pool = sum(res["prepare"]["pool"].values())
            res["train"] = train(work, args, res["retrieve"]["scores"]["kept"], n_pool, res["retrieve"]["record"]["key"])
        elif stage == "report":
            from edgedistill.deploy.bench import machine_info

            res["machine"] = machine_info()
            text = report(res)
            print(text)
            storage.write_text(out.with_suffix(".md"), f"Command: `{res['command']}`\n\n{text}\n")
            storage.write_json(out.with_suffix(".json"), res)
            _log(f"wrote {out.with_suffix('.json')} and .md")
        res["seconds"][stage] = round(time.perf_counter() - t0, 1)
        storage.write_json(state_path, res)  # each finished stage is recorded: a rerun continues from here
    return res


if __name__ == "__main__":
    main()
