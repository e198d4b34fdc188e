"""Recipes at equal wall clock: held-out accuracy against training minutes, on folders cut from CIFAR-10 training images.

    # cut a user-like folder (labelled train/<class>/, unlabelled extra/, held-out test/<class>/, disjoint)
    python benchmarks/recipes.py folder --out /tmp/f8k --labelled 100 --unlabelled 7000 --test 200
    # every recipe on it, each student with the same training budget (minutes), in one distill run
    python benchmarks/recipes.py run --folder /tmp/f8k --budget 2 --out /tmp/rec8k
    # the table of several runs (markdown, for docs/benchmarks.md)
    python benchmarks/recipes.py table /tmp/rec2k /tmp/rec8k

Images: ``~/.cache/edgedistill-data/train/<class>/*.jpg`` (../shared/data/README.md: CIFAR-10's training split; the
test split is never used). Teacher: the offline EfficientNet-Lite0 at 96 px (ONNX Runtime while caching). Each recipe
is a student row of one ``distill`` run over the same cache, trained for ``--budget`` minutes of wall clock
(``train.budget_s``: the step time is measured at the start and the cosine schedule laid out to end inside it), so
the rows compare at equal training time on the same machine. Rows:

- ``tutorial``: the tutorial's recipe (response KD, Adam 3e-4, no augmentation, T=1, ``'mean'`` reduction), the peer;
- ``kd``: response KD (T=2) from the probe, SGD 0.1, pad-and-crop + flip on the cached plain-view targets (the demo's);
- ``kd_views``: the same with 4 cached augmented views per image, targets consistent with the student's crop;
- ``kd_narrow16``: ``kd`` with the narrower ResNet18 (channels 16-128), the planner's fallback when epochs are short;
- ``scratch``: cross-entropy on the labelled images alone (the baseline).

Every student is the narrow ResNet18 (channels 32-256, small-input stem) at 32 px unless named otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

os.environ.setdefault("EDGEDISTILL_NO_PROGRESS", "1")

CIFAR = Path("~/.cache/edgedistill-data/train").expanduser()
NARROW = {"channels": [32, 64, 128, 256]}


def cut_folder(out: Path, labelled: int, unlabelled: int, test: int, seed: int = 0, src: Path = CIFAR) -> dict:
    """``out/train/<class>/`` (``labelled`` per class), ``out/test/<class>/`` (``test`` per class, disjoint) and
    ``out/extra/`` (``unlabelled`` images in all, spread evenly over the classes), copied from ``src``."""
    if not src.is_dir():
        sys.exit(f"error: {src} is missing; unpack ../shared/data/cifar10-train.tar.gz there (../shared/data/README.md)")
    rng = random.Random(seed)
    classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    per_class = -(-unlabelled // len(classes))
    counts = {"train": 0, "test": 0, "extra": 0}
    for c in classes:
        files = sorted((src / c).glob("*.jpg"))
        rng.shuffle(files)
        parts = {"train": files[:labelled], "test": files[labelled:labelled + test],
                 "extra": files[labelled + test:labelled + test + per_class]}
        for part, chosen in parts.items():
            folder = out / part / c if part != "extra" else out / "extra"
            folder.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                if counts[part] >= unlabelled and part == "extra":
                    break
                shutil.copyfile(f, folder / (f"{c}_{f.name}" if part == "extra" else f.name))
                counts[part] += 1
    return counts


def recipes(budget_s: float, views: bool) -> list[dict]:
    """The student rows (see the module docstring)."""
    kd = {"target": "logits", "head": "linear", "temperature": 2.0, "train_split": "train+unlabeled",
          "budget_s": budget_s}
    rows = [
        {"name": "tutorial", "train": {**kd, "optimizer": "adam", "lr": 3e-4, "weight_decay": 0.0, "aug": False,
                                       "pad_crop": 0, "temperature": 1.0, "kd_reduction": "mean"},
         "note": "the tutorial's recipe: Adam 3e-4, no augmentation, T=1, 'mean' reduction"},
        {"name": "kd", "train": dict(kd), "note": "response KD, pad-and-crop on plain-view targets"},
        {"name": "kd_narrow16", "train": {**kd, "student_kwargs": {"channels": [16, 32, 64, 128]}},
         "note": "kd with channels 16-128"},
        {"name": "scratch", "train": {"target": "labels", "budget_s": budget_s}, "note": "labels only"},
    ]
    if views:
        rows.insert(2, {"name": "kd_views", "train": {**kd, "views": 4, "pad_crop": 0, "min_crop": 0.35},
                        "note": "4 cached augmented views: targets consistent with the crop"})
    return rows


def run(folder: Path, out: Path, budget_min: float, views: bool) -> dict:
    from edgedistill.config import DistillConfig, from_dict
    from edgedistill.pipelines.distill import run_distill

    raw = {
        "name": f"recipes-{folder.name}", "out": str(out),
        "cache_dir": str(out / "cache"),  # its own: a cache keyed by folder name would collide across folders
        "data": {"dataset": "imagefolder", "root": str(folder), "unlabeled": [str(folder / "extra")],
                 "val_fraction": 0.2, "seed": 0},
        "teacher": {"kind": "efficientnet_lite0", "image_size": 96, "runtime": "onnxruntime", "processes": 2},
        "heads": {"zero_shot": "label_map", "probe": True},
        "train": {"student": "resnet18", "student_kwargs": NARROW, "small_input": True, "image_size": 32,
                  "pad_crop": 4, "optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "batch_size": 128,
                  "warmup_epochs": 0.15, "num_workers": 0},
        "students": recipes(60.0 * budget_min, views),
        "deploy": {"int8": False, "batch_sizes": [8], "warmup": 2, "iters": 10, "tutorial_teacher": None},
    }
    return run_distill(from_dict(DistillConfig, raw, "benchmarks/recipes.py"))


def table(outs: list[Path]) -> str:
    lines = ["| folder (labelled + unlabelled) | recipe | budget min | epochs | train min | val acc | held-out acc | "
             "% of probe |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for out in outs:
        r = json.loads((out / "results.json").read_text())
        c = r["data"]["counts"]
        probe = r["teacher"]["heads"]["linear"]["test_acc"]
        where = f"{c['train'] + c['val']:,} + {c['unlabeled']:,}"
        lines.append(f"| {where} | teacher probe | | | | {100 * r['teacher']['heads']['linear']['val_acc']:.1f} | "
                     f"{100 * probe:.1f} | 100 |")
        budgets = (r.get("plan") or {}).get("budgets") or {}
        for s in r["students"]:
            b = budgets.get(s["name"], {})
            lines.append(f"| {where} | {s['name']} | {b.get('budget_s', 0) / 60:.1f} | {s['epochs']} | "
                         f"{(s['train_s'] or 0) / 60:.1f} | {100 * s['val_acc']:.1f} | {100 * s['test_acc']:.1f} | "
                         f"{100 * s['test_acc'] / probe:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("folder")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--labelled", type=int, default=100, help="labelled images per class")
    f.add_argument("--unlabelled", type=int, default=7000, help="unlabelled images in all")
    f.add_argument("--test", type=int, default=200, help="held-out images per class")
    f.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("--folder", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--budget", type=float, default=2.0, help="training minutes per recipe")
    r.add_argument("--no-views", action="store_true", help="skip kd_views (its cache holds every view in memory)")
    t = sub.add_parser("table")
    t.add_argument("outs", type=Path, nargs="+")
    a = p.parse_args()
    if a.cmd == "folder":
        print(cut_folder(a.out, a.labelled, a.unlabelled, a.test, a.seed))
    elif a.cmd == "run":
        run(a.folder, a.out, a.budget, not a.no_views)
        print(table([a.out]))
    else:
        print(table(a.outs))


if __name__ == "__main__":
    main()
