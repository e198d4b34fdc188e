"""Accuracy of teachers (zero-shot text head, ImageNet label map, linear probe) and of trained students.

* :func:`evaluate_logits`: top-1, per-class accuracy and the confusion matrix (torchmetrics).
* :func:`plot_confusion`: the confusion matrix as a PNG (matplotlib, Agg backend).
* :func:`fit_probe`: the linear probe fitted on cached ``train`` embeddings (selected on ``val``), or the saved
  one when it was fitted for this teacher on these exact images (:func:`probe_key`).
* :func:`evaluate_teacher` / :func:`teacher_command`: a teacher's accuracy on a split, read
  through the teacher-output cache (computing what is missing); optionally trains the linear
  probe on ``train`` (selected on ``val``) and saves it. Writes ``teacher.json`` + PNGs.
* :func:`evaluate_student` / :func:`eval_command`: a trained run directory (``student.json`` +
  ``student.safetensors``) on a split or on an arbitrary ImageFolder; or a teacher head.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from edgedistill import heads as H
from edgedistill import storage
from edgedistill.cache import ensure_cache, gather
from edgedistill.config import DEFAULT_CACHE_DIR, DataConfig, TeacherConfig, Templates
from edgedistill.console import progress, say
from edgedistill.data.sources import ImageFolderSource
from edgedistill.data.splits import SplitDataset, SplitPart, build_splits, collate_skip_bad
from edgedistill.data.transforms import eval_transform
from edgedistill.data.views import ViewSpec
from edgedistill.errors import ConfigError, DataError, EdgeDistillError
from edgedistill.heads import LinearProbe, load_head, save_head, train_linear_probe
from edgedistill.students import load_student
from edgedistill.teachers import create_teacher, resolve_device


# ----------------------------------------------------------------------------- metrics


def evaluate_logits(logits: Tensor | np.ndarray, labels: Tensor | np.ndarray, class_names: Sequence[str]) -> dict:
    """Top-1 accuracy, per-class accuracy and confusion matrix.

    Args:
        logits: ``[N, C]`` scores (logits, log-probabilities or probabilities: only the argmax matters).
        labels: ``[N]`` int class indices; rows with label ``< 0`` (hidden) are ignored.
        class_names: the C class names.

    Returns:
        ``{"acc": float, "n": int, "per_class": {name: float | None}, "confusion": [[int]] (C x C,
        rows = true class, columns = predicted)}``. A class without samples has accuracy None.
    """
    logits = torch.as_tensor(np.asarray(logits) if not isinstance(logits, Tensor) else logits).float().cpu()
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).long().cpu()
    C = len(class_names)
    if logits.ndim != 2 or logits.shape[1] != C:
        raise EdgeDistillError(f"logits of shape {tuple(logits.shape)} do not match {C} classes ({list(class_names)[:5]}...)")
    keep = labels >= 0
    logits, labels = logits[keep], labels[keep]
    if len(labels) == 0:
        raise DataError("Nothing to evaluate: no labeled images (every label is hidden or the split is empty)")
    acc = MulticlassAccuracy(num_classes=C, average="micro", top_k=1)(logits, labels)
    per_class = MulticlassAccuracy(num_classes=C, average=None)(logits, labels)  # [C]
    confusion = MulticlassConfusionMatrix(num_classes=C)(logits, labels)  # [C, C]
    support = confusion.sum(1)
    return {
        "acc": float(acc),
        "n": int(len(labels)),
        "per_class": {
            name: (float(per_class[c]) if support[c] > 0 else None) for c, name in enumerate(class_names)
        },
        "confusion": confusion.tolist(),
    }


def plot_confusion(confusion: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                   title: str = "") -> Path:
    """Save a confusion matrix (rows true, columns predicted; colour = row-normalised) as a PNG.

    Args:
        confusion: ``[C, C]`` counts.
        class_names: the C names.
        path: the PNG to write (atomically).
        title: figure title.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.int64)
    C = len(class_names)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)  # colour by recall so big classes don't dominate
    size = max(4.0, 0.5 * C + 2.0)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(C), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(C), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if C <= 30:  # numbers stay readable up to about 30 classes
        for i in range(C):
            for j in range(C):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of ``{"model", "head", "split", "n", "acc"}`` rows."""
    lines = ["| model | head | split | N | top-1 acc |", "| --- | --- | --- | ---: | ---: |"]
    lines += [f"| {r['model']} | {r['head']} | {r['split']} | {r['n']} | {100 * r['acc']:.2f}% |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- teacher

TEACHER_HEADS = ("auto", "text", "label_map", "linear", "all")


def resolve_heads(head: str, teacher) -> list[str]:
    """Head kinds of ``head`` (``auto``, ``all``, one kind, or a comma-separated list) for this teacher."""
    names = [h.strip() for h in head.split(",") if h.strip()]
    bad = [h for h in names if h not in TEACHER_HEADS]
    if bad or not names:
        raise ConfigError(f"Unknown head {head!r}. Valid: {', '.join(TEACHER_HEADS)}, or a comma-separated list")
    kinds: list[str] = []
    for h in names:
        if h == "auto":
            kinds += ["text"] if teacher.has_text else ["label_map"]
        elif h == "all":
            kinds += (["text"] if teacher.has_text else []) + (["label_map"] if teacher.num_classes else []) + ["linear"]
        else:
            kinds.append(h)
    return list(dict.fromkeys(kinds))


def _probe_base(path: str | os.PathLike) -> Path:
    """A saved probe given as its base path, one of its files, or a folder holding ``probe.*`` (or ``head.*``)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for stem in ("probe", "head"):
            if (p / f"{stem}.json").is_file():
                return p / stem
        raise ConfigError(f"--probe {str(path)!r}: the folder holds no probe.json / head.json")
    return p.with_suffix("") if p.suffix in (".json", ".safetensors") else p


# ----------------------------------------------------------------------------- the linear probe


def probe_key(splits, caches: dict) -> dict:
    """What a saved probe depends on: the teacher and exactly which images are ``train`` and ``val``."""
    h = hashlib.sha256()
    for name in ("train", "val"):
        for part in splits.parts.get(name, []):
            h.update(f"{name}:{part.source}:{part.labeled}:".encode())
            h.update(np.asarray(part.indices, dtype=np.int64).tobytes())
    fingerprints = sorted({c.manifest["teacher"]["fingerprint"] for c in caches.values()})
    return {"teacher_fingerprint": fingerprints, "train_val_sha256": h.hexdigest()}


def fit_probe(splits, caches: dict, out: Path | None, retrain: bool = False) -> tuple[LinearProbe, dict]:
    """The probe saved at ``out`` if it was fitted for this teacher on these exact ``train``/``val`` images,
    else a new one fitted on the cached ``train`` embeddings and selected on ``val`` (and saved at ``out``).

    Args:
        splits: The dataset's ``DataSplits``.
        caches: ``{source key: TeacherCache}`` covering ``train`` and ``val``.
        out: Base path of the saved probe (``<out>.safetensors`` + ``<out>.json``); None: do not save.
        retrain: Fit anew even if a valid saved probe exists.

    Returns:
        (probe, report): the report holds the chosen weight decay, the sweep and ``loaded_from`` when reused.
    """
    key = probe_key(splits, caches)
    if out is not None and not retrain and Path(f"{out}.json").is_file():
        meta = storage.read_json(f"{out}.json")
        if meta.get("key") == key:
            return load_head(out), {**meta.get("probe", {}), "key": key, "loaded_from": str(out)}
        say(f"{out}: fitted for another teacher or other train/val images; fitting a new probe")
    for name in ("train", "val"):
        if name not in splits.parts:
            raise DataError(f"The linear probe needs a {name!r} split (data.val_fraction > 0 for val); "
                            f"this dataset has {', '.join(splits.parts)}")
    train, val = gather(splits, caches, "train"), gather(splits, caches, "val")
    keep = train.labels >= 0  # labels hidden by data.labeled_per_class are not training labels
    probe, report = train_linear_probe(train.embedding[keep], train.labels[keep], val.embedding, val.labels,
                                       num_classes=len(splits.classes))
    if out is not None:
        save_head(probe, out, extra={"probe": report, "class_names": list(splits.classes), "key": key})
    return probe, {**report, "key": key}


# ----------------------------------------------------------------------------- teacher


@dataclass
class TeacherEvalPlan:
    """Everything a teacher evaluation needs, checked before any teacher output is computed."""

    splits: Any
    model: Any
    kinds: list[str]
    heads: dict[str, tuple[Any, list[str]]]
    cache_spec: str


def plan_teacher_eval(data: DataConfig, teacher: TeacherConfig, *, head: str, templates: str, label_map: str | None,
                      probe: str | None, split: str, cache_dir: str = DEFAULT_CACHE_DIR) -> TeacherEvalPlan:
    """Resolve the heads and check every argument (label map, probe, splits) before the teacher runs on any image."""
    splits = build_splits(data)
    if not splits.size(split):
        raise DataError(f"Split {split!r} is empty for dataset {data.dataset!r}. Valid: {', '.join(splits.parts)}")
    if not (splits.labels(split) >= 0).any():
        raise DataError(f"Split {split!r} has no labels to evaluate against. Valid labeled splits: "
                        f"{', '.join(n for n, ps in splits.parts.items() if any(p.labeled for p in ps))}")
    model = create_teacher(teacher, cache_dir)
    kinds = resolve_heads(head, model)
    classes, built = splits.classes, {}
    spec = [split]
    for kind in kinds:
        if kind == "text":
            built[kind] = (H.build_head("text", classes=classes, dataset=data.dataset, teacher=model,
                                        templates=templates), classes)
        elif kind == "label_map":
            if not model.num_classes:
                raise ConfigError(f"head='label_map' needs a classifier teacher; {teacher.describe()} has no logits")
            built[kind] = (H.build_head("label_map", classes=classes, dataset=data.dataset, label_map=label_map), classes)
        elif probe is not None:
            base = _probe_base(probe)
            # A probe scores the classes it was fitted on; the images' classes must be among them.
            probe_classes = storage.read_json(f"{base}.json").get("class_names") or classes
            unknown = [c for c in classes if c not in probe_classes]
            if unknown:
                raise DataError(f"Classes {unknown} of the images are not among the probe's classes {probe_classes}")
            built[kind] = (H.build_head("linear", classes=probe_classes, dataset=data.dataset, saved=str(base)),
                           list(probe_classes))
        else:
            for name in ("train", "val"):
                if not splits.size(name):
                    raise DataError(f"head=linear without --probe fits a probe, which needs a {name!r} split "
                                    f"(data.val_fraction > 0 for val); this dataset has {', '.join(splits.parts)}. "
                                    "Pass --probe PATH to score a saved probe instead")
            spec += ["train", "val"]
    return TeacherEvalPlan(splits, model, kinds, built, "+".join(dict.fromkeys(spec)))


def evaluate_teacher(
    data: DataConfig,
    teacher: TeacherConfig,
    *,
    head: str = "auto",
    templates: str = "ensemble",
    label_map: str | None = None,
    probe: str | None = None,
    split: str = "val",
    train_probe: bool = False,
    cache_dir: str = DEFAULT_CACHE_DIR,
    out: str | os.PathLike | None = "runs/teacher",
    num_workers: int = 2,
) -> dict:
    """A teacher's accuracy on ``split`` with one or more heads, through the teacher-output cache.

    Args:
        data: the dataset.
        teacher: the teacher.
        head: ``auto`` (text for CLIP, label_map for ImageNet classifiers), ``text``, ``label_map``,
            ``linear``, ``all``, or a comma-separated list such as ``label_map,linear``.
        templates: prompt templates of the text head (``heads.build_text_head``).
        label_map: label map name (``cifar10``, ``stl10``) or JSON path; None: the dataset's default.
        probe: a saved linear probe to score (its base path, file, or the folder holding ``probe.*``);
            None: fit one on ``train`` (selected on ``val``), or reuse the one in ``out``.
        split: the split evaluated (``val``, ``test``, ...).
        train_probe: refit the linear probe even if ``out`` has a valid one.
        cache_dir: the teacher-output cache root.
        out: folder for ``teacher.json``, confusion PNGs and the probe; None writes nothing.
        num_workers: image-decoding workers while caching.

    Returns:
        ``{"teacher": {...}, "split", "n", "bad", "heads": {kind: evaluate_logits(...) + "png"}, "table": [rows]}``.
    """
    plan = plan_teacher_eval(data, teacher, head=head, templates=templates, label_map=label_map, probe=probe,
                             split=split, cache_dir=cache_dir)
    out_dir = Path(out) if out is not None else None
    caches = ensure_cache(data, teacher, plan.cache_spec, cache_dir, teacher=plan.model, splits=plan.splits,
                          num_workers=num_workers)
    cached = gather(plan.splits, caches, split)
    classes = plan.splits.classes
    results: dict[str, Any] = {
        "teacher": {"kind": teacher.kind, "model": teacher.model, "pretrained": teacher.pretrained,
                    "fingerprint": plan.model.fingerprint},
        "data": plan.splits.manifest, "split": split, "n": int((cached.labels >= 0).sum()), "bad": cached.bad,
        "cache": {k: str(c.path) for k, c in caches.items()}, "heads": {},
    }
    rows = []
    for kind in plan.kinds:
        t0 = time.perf_counter()
        report = None
        if kind in plan.heads:
            module, head_classes = plan.heads[kind]
        else:
            module, report = fit_probe(plan.splits, caches, out_dir / "probe" if out_dir else None, retrain=train_probe)
            head_classes = classes
        x = cached.logits if kind == "label_map" else cached.embedding
        with torch.no_grad():
            pred = module.float().eval()(torch.from_numpy(x))  # [N, C]
        to_head = np.asarray([head_classes.index(c) for c in classes] + [-1])  # label -1 (hidden) stays -1
        r = evaluate_logits(pred, to_head[cached.labels], head_classes)
        r["seconds"] = round(time.perf_counter() - t0, 3)
        if report is not None:
            r["probe"] = report  # weight decay chosen on val: its val accuracy is optimistic
        if out_dir is not None:
            png = plot_confusion(r["confusion"], head_classes, out_dir / f"confusion_{kind}_{split}.png",
                                 f"{teacher.describe()} {kind} head, {split}: {100 * r['acc']:.2f}%")
            r["png"] = png.name
        results["heads"][kind] = r
        rows.append({"model": teacher.describe(), "head": kind, "split": split, "n": r["n"], "acc": r["acc"]})
    results["table"] = rows
    if out_dir is not None:
        storage.write_json(out_dir / "teacher.json", results)
    return results


def teacher_command(
    data: DataConfig = DataConfig(),
    teacher: TeacherConfig = TeacherConfig(),
    head: str = "auto",
    templates: Templates = "ensemble",
    label_map: str | None = None,
    probe: str | None = None,
    split: str = "val",
    train_probe: bool = False,
    cache_dir: str = DEFAULT_CACHE_DIR,
    out: str = "runs/teacher",
) -> None:
    """Teacher accuracy: zero-shot text head, ImageNet label map, or linear probe.

    Args:
        data: the dataset.
        teacher: the teacher.
        head: auto (text for CLIP, label_map for ImageNet classifiers), text, label_map, linear, all, or a list a,b.
        templates: prompt templates of the text head (ensemble, simple or tutorial).
        label_map: label map name (cifar10, stl10) or a JSON path; default: the dataset's.
        probe: a saved linear probe to score (path, or the folder holding probe.*); default: fit one on train.
        split: the split to evaluate.
        train_probe: refit the linear probe (on train, selected on val) even if out/ holds one.
        cache_dir: the teacher-output cache root.
        out: folder for teacher.json, confusion PNGs and the probe.
    """
    results = evaluate_teacher(data, teacher, head=head, templates=templates, label_map=label_map, probe=probe,
                               split=split, train_probe=train_probe, cache_dir=cache_dir, out=out)
    print(format_table(results["table"]))
    if results["bad"]:
        print(f"skipped {results['bad']} unreadable images")
    print(f"wrote {Path(out) / 'teacher.json'}")


# ----------------------------------------------------------------------------- student


def load_student_classifier(run: str | os.PathLike, device: str | torch.device = "cpu"):
    """A trained student mapping ``[B, 3, S, S]`` (its manifest's ``view``) to class logits ``[B, C]``, and its manifest.

    An embedding student is followed by the head saved beside it (``head.safetensors``/``head.json``).
    """
    run = Path(run).expanduser()
    model, manifest = load_student(run)
    if manifest.target == "embedding":
        model = torch.nn.Sequential(model, load_head(run if run.is_dir() else run.parent))  # [B, D] -> [B, C]
    return model.to(device).eval(), manifest


def _predict(model: torch.nn.Module, dataset, batch_size: int, num_workers: int, device) -> tuple[Tensor, Tensor, int]:
    """Logits ``[N, C]`` and labels ``[N]`` of a dataset of dict items; unreadable images skipped and counted."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_bad)
    logits, labels, bad = [], [], 0
    with torch.inference_mode(), progress(len(loader), "eval", unit="batch") as bar:
        for batch in loader:
            bar.update(1)
            if batch is None:  # every image of the batch unreadable
                bad += batch_size
                continue
            bad += batch["n_bad"]
            logits.append(model(batch["image"].to(device)).float().cpu())
            labels.append(torch.as_tensor(batch["label"]))
    if not logits:
        raise DataError("No readable images to evaluate")
    return torch.cat(logits), torch.cat(labels), bad


def evaluate_student(
    run: str | os.PathLike,
    data: DataConfig | None = None,
    *,
    split: str = "test",
    images: str | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = 256,
    num_workers: int = 2,
    device: str = "auto",
) -> dict:
    """A trained student's accuracy on a split of ``data`` or on an ImageFolder ``images``.

    Args:
        run: the training run directory (``student.json``, ``student.safetensors``).
        data: the dataset (for ``split``); ignored when ``images`` is set.
        split: the split evaluated.
        images: an ImageFolder (``<dir>/<class>/*.jpg``) whose folder names are training class names.
        out: where ``eval_<name>.json`` and the confusion PNG go; None: ``run``.
        batch_size: images per forward.
        num_workers: image-decoding workers.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.

    Returns:
        ``evaluate_logits(...)`` plus ``"split"``, ``"bad"``, ``"run"``, ``"png"``.
    """
    dev = resolve_device(device)
    model, manifest = load_student_classifier(run, dev)
    classes = list(manifest.class_names)
    transform = eval_transform(ViewSpec(**manifest.view))
    if images is not None:
        # ImageFolderSource raises DataError naming folders that are not training classes
        src = ImageFolderSource(images, "images", classes=classes)
        dataset = SplitDataset({"images": src}, [SplitPart("images", np.arange(len(src)), True)], transform)
        name = Path(images).name or "images"
    else:
        splits = build_splits(data or DataConfig())
        if list(splits.classes) != classes:
            raise DataError(f"The run was trained on classes {classes} but dataset {splits.manifest['dataset']!r} "
                            f"has {list(splits.classes)}")
        dataset, name = splits.dataset(split, transform), split
    logits, labels, bad = _predict(model, dataset, batch_size, num_workers, dev)
    r = evaluate_logits(logits, labels, classes)
    out_dir = Path(out) if out is not None else Path(run)
    r.update({"run": str(run), "split": name, "bad": bad, "arch": manifest.arch})
    r["png"] = plot_confusion(r["confusion"], classes, out_dir / f"confusion_{name}.png",
                              f"{manifest.arch} on {name}: {100 * r['acc']:.2f}%").name
    storage.write_json(out_dir / f"eval_{name}.json", r)
    return r


def eval_command(
    run: str | None = None,
    data: DataConfig = DataConfig(),
    teacher: TeacherConfig = TeacherConfig(),
    split: str = "test",
    images: str | None = None,
    head: str = "auto",
    templates: Templates = "ensemble",
    label_map: str | None = None,
    probe: str | None = None,
    cache_dir: str = DEFAULT_CACHE_DIR,
    out: str | None = None,
    batch_size: int = 256,
    num_workers: int = 2,
    device: str = "auto",
) -> None:
    """Evaluate a trained student (--run DIR) or, without --run, a teacher head, on a split or an ImageFolder.

    Args:
        run: a training run directory (student.json + student.safetensors); None: evaluate the teacher.
        data: the dataset (its split, and its classes for the teacher).
        teacher: the teacher (when no --run).
        split: the split to evaluate.
        images: an ImageFolder <dir>/<class>/*.jpg to evaluate instead of a split (folder names = class names).
        head: teacher head: auto, text, label_map, linear, all, or a list a,b.
        templates: prompt templates of the text head (teacher only).
        label_map: label map name or JSON path (teacher only); default: a shipped map covering the classes.
        probe: a saved linear probe for head=linear (its path, or the folder holding probe.*); teacher only.
        cache_dir: the teacher-output cache root (teacher only).
        out: output folder for the JSON and the confusion PNG; default: the run dir (student) or runs/teacher.
        batch_size: images per forward (student).
        num_workers: image-decoding workers.
        device: auto, cpu or cuda[:N] (student).
    """
    if run is not None:
        r = evaluate_student(run, data, split=split, images=images, out=out, batch_size=batch_size,
                             num_workers=num_workers, device=device)
        print(format_table([{"model": r["arch"], "head": "student", "split": r["split"], "n": r["n"], "acc": r["acc"]}]))
        if r["bad"]:
            print(f"skipped {r['bad']} unreadable images")
        return
    if images is not None:
        # the teacher path reads through the cache, which is keyed by dataset sources
        data = DataConfig(dataset="imagefolder", root=images, val_fraction=0.0, seed=data.seed)
        split = "train"
    results = evaluate_teacher(data, teacher, head=head, templates=templates, label_map=label_map, probe=probe,
                               split=split, cache_dir=cache_dir, out=out or "runs/teacher", num_workers=num_workers)
    print(format_table(results["table"]))
