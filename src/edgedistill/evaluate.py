"""Accuracy of teachers (zero-shot text head, ImageNet label map, linear probe) and of trained students.

* :func:`evaluate_logits`: top-1, per-class accuracy and the confusion matrix (torchmetrics).
* :func:`plot_confusion`: the confusion matrix as a PNG (matplotlib, Agg backend).
* :func:`evaluate_teacher` / :func:`teacher_command`: a teacher's accuracy on a split, read
  through the teacher-output cache (computing what is missing); optionally trains the linear
  probe on ``train`` (selected on ``val``) and saves it. Writes ``teacher.json`` + PNGs.
* :func:`evaluate_student` / :func:`eval_command`: a trained run directory (``student.json`` +
  ``student.safetensors``) on a split or on an arbitrary ImageFolder; or a teacher head.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from edgedistill import storage
from edgedistill.config import DataConfig, TeacherConfig
from edgedistill.errors import ConfigError, DataError, EdgeDistillError

TEACHER_HEADS = ("auto", "text", "label_map", "linear", "all")
DEFAULT_LABEL_MAPS = {"cifar10": "cifar10", "demo": "cifar10", "stl10": "stl10"}


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
    from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

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


def _cached_split(splits, caches: dict, spec: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, int]:
    """The cached teacher outputs of a split, readable images only.

    Returns:
        ``(embedding [N, D] float32, logits [N, C] float32 or None, labels [N] int64 (-1 hidden), n_bad)``.
    """
    embs, logits, labels, bad = [], [], [], 0
    for name in spec.split("+"):
        for part in splits.parts.get(name.strip(), []):
            cache = caches[part.source]
            valid = cache.valid[part.indices]
            idx = part.indices[valid]
            bad += int((~valid).sum())
            embs.append(cache.embedding[idx].astype(np.float32))
            if cache.logits is not None:
                logits.append(cache.logits[idx].astype(np.float32))
            lab = splits.sources[part.source].labels[idx] if part.labeled else np.full(len(idx), -1)
            labels.append(np.asarray(lab, dtype=np.int64))
    if not embs:
        raise DataError(f"Split {spec!r} is empty for this dataset. Valid: {', '.join(splits.parts)}")
    lg = np.concatenate(logits) if len(logits) == len(embs) else None
    return np.concatenate(embs), lg, np.concatenate(labels), bad


def _resolve_heads(head: str, teacher) -> list[str]:
    if "," in head:  # an explicit list, e.g. "label_map,linear"
        return list(dict.fromkeys(k for h in head.split(",") for k in _resolve_heads(h.strip(), teacher)))
    if head not in TEACHER_HEADS:
        raise ConfigError(f"Unknown head {head!r}. Valid: {', '.join(TEACHER_HEADS)}, or a comma-separated list")
    if head == "auto":
        return ["text"] if teacher.has_text else ["label_map"]
    if head == "all":
        return (["text"] if teacher.has_text else []) + (["label_map"] if teacher.num_classes else []) + ["linear"]
    return [head]


def evaluate_teacher(
    data: DataConfig,
    teacher: TeacherConfig,
    *,
    head: str = "auto",
    templates: str = "ensemble",
    label_map: str | None = None,
    split: str = "val",
    train_probe: bool = False,
    cache_dir: str = "~/.cache/edgedistill",
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
        split: the split evaluated (``val``, ``test``, ...).
        train_probe: (re)train the linear probe on ``train`` (selected on ``val``) even if ``out`` has one.
        cache_dir: the teacher-output cache root.
        out: folder for ``teacher.json``, confusion PNGs and the probe; None writes nothing.
        num_workers: image-decoding workers while caching.

    Returns:
        ``{"teacher": {...}, "split", "n", "bad", "heads": {kind: evaluate_logits(...) + "png"}, "table": [rows]}``.
    """
    from edgedistill import heads as H
    from edgedistill.cache import build_teacher, ensure_cache
    from edgedistill.data import build_splits

    splits = build_splits(data)
    model = build_teacher(teacher)
    kinds = _resolve_heads(head, model)
    need_probe = "linear" in kinds
    out_dir = Path(out) if out is not None else None
    spec = "+".join(dict.fromkeys([split] + (["train", "val"] if need_probe else [])))
    caches = ensure_cache(data, teacher, spec, cache_dir, teacher=model, splits=splits, num_workers=num_workers)
    emb, logits, labels, bad = _cached_split(splits, caches, split)
    if not (labels >= 0).any():
        raise DataError(f"Split {split!r} has no labels to evaluate against. Valid labeled splits: "
                        f"{', '.join(n for n, ps in splits.parts.items() if any(p.labeled for p in ps))}")
    classes = splits.classes
    results: dict[str, Any] = {
        "teacher": {"kind": teacher.kind, "model": teacher.model, "pretrained": teacher.pretrained,
                    "fingerprint": model.fingerprint},
        "data": splits.manifest,
        "split": split,
        "n": int((labels >= 0).sum()),
        "bad": bad,
        "cache": {k: str(c.path) for k, c in caches.items()},
        "heads": {},
    }
    rows = []
    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "text":
            module, x = H.build_text_head(model, classes, templates=templates), emb
        elif kind == "label_map":
            if logits is None:
                raise ConfigError(f"head='label_map' needs a classifier teacher; {teacher.kind}:{teacher.model} has no logits")
            name = label_map or DEFAULT_LABEL_MAPS.get(data.dataset)
            if name is None:
                raise ConfigError(f"No default label map for dataset {data.dataset!r}; pass --label_map cifar10|stl10|PATH.json")
            module, x = H.load_label_map(name, classes), logits
        else:
            module, probe_report = _linear_probe(H, splits, caches, classes, out_dir, train_probe)
            x = emb
        with torch.no_grad():
            pred = module.float().eval()(torch.from_numpy(x))  # [N, C]
        r = evaluate_logits(pred, labels, classes)
        r["seconds"] = round(time.perf_counter() - t0, 3)
        if kind == "linear":
            r["probe"] = probe_report  # weight decay chosen on val: its val accuracy is optimistic
        if out_dir is not None:
            png = plot_confusion(r["confusion"], classes, out_dir / f"confusion_{kind}_{split}.png",
                                 f"{teacher.model} {kind} head, {split}: {100 * r['acc']:.2f}%")
            r["png"] = png.name
        results["heads"][kind] = r
        rows.append({"model": f"{teacher.kind}:{teacher.model}", "head": kind, "split": split, "n": r["n"], "acc": r["acc"]})
    results["table"] = rows
    if out_dir is not None:
        storage.write_json(out_dir / "teacher.json", results)
    return results


def _probe_key(splits, caches: dict) -> dict:
    """What a saved probe depends on: the teacher and exactly which images are ``train`` and ``val``."""
    h = hashlib.sha256()
    for name in ("train", "val"):
        for part in splits.parts.get(name, []):
            h.update(f"{name}:{part.source}:{part.labeled}:".encode())
            h.update(np.asarray(part.indices, dtype=np.int64).tobytes())
    fingerprints = sorted({c.manifest["teacher"]["fingerprint"] for c in caches.values()})
    return {"teacher_fingerprint": fingerprints, "train_val_sha256": h.hexdigest()}


def _linear_probe(H, splits, caches, classes, out_dir: Path | None, retrain: bool) -> tuple[torch.nn.Module, dict]:
    """The probe saved in ``out_dir/probe`` if it was trained by this teacher on these exact ``train``/``val``
    images, else a new one trained on cached ``train`` embeddings and selected on ``val`` (and saved)."""
    saved = out_dir / "probe" if out_dir is not None else None
    key = _probe_key(splits, caches)
    if saved is not None and not retrain and (out_dir / "probe.json").is_file():
        meta = storage.read_json(out_dir / "probe.json")
        if meta.get("key") == key:
            return H.load_head(saved), {**meta, "loaded_from": str(saved)}
        print(f"{saved}: trained for another teacher or other train/val images; training a new probe", file=sys.stderr)
    for name in ("train", "val"):
        if name not in splits.parts:
            raise DataError(f"The linear probe needs a {name!r} split (data.val_fraction > 0 for val); "
                            f"this dataset has {', '.join(splits.parts)}")
    x_tr, _, y_tr, _ = _cached_split(splits, caches, "train")
    x_va, _, y_va, _ = _cached_split(splits, caches, "val")
    keep = y_tr >= 0  # labels hidden by data.labeled_per_class are not training labels
    probe, report = H.train_linear_probe(x_tr[keep], y_tr[keep], x_va, y_va, num_classes=len(classes))
    if saved is not None:
        H.save_head(probe, saved, manifest={"probe": report, "class_names": list(classes), "key": key})
    return probe, report


def teacher_command(
    data: DataConfig = DataConfig(),
    teacher: TeacherConfig = TeacherConfig(),
    head: str = "auto",
    templates: str = "ensemble",
    label_map: str | None = None,
    split: str = "val",
    train_probe: bool = False,
    cache_dir: str = "~/.cache/edgedistill",
    out: str = "runs/teacher",
) -> None:
    """Teacher accuracy: zero-shot text head, ImageNet label map, or linear probe.

    Args:
        data: the dataset.
        teacher: the teacher.
        head: auto (text for CLIP, label_map for ImageNet classifiers), text, label_map, linear or all.
        templates: prompt templates of the text head (e.g. ensemble).
        label_map: label map name (cifar10, stl10) or a JSON path; default: the dataset's.
        split: the split to evaluate.
        train_probe: retrain the linear probe (on train, selected on val) even if out/ holds one.
        cache_dir: the teacher-output cache root.
        out: folder for teacher.json, confusion PNGs and the probe.
    """
    results = evaluate_teacher(data, teacher, head=head, templates=templates, label_map=label_map, split=split,
                               train_probe=train_probe, cache_dir=cache_dir, out=out)
    print(format_table(results["table"]))
    if results["bad"]:
        print(f"skipped {results['bad']} unreadable images")
    print(f"wrote {Path(out) / 'teacher.json'}")


# ----------------------------------------------------------------------------- student


def load_student_classifier(run: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """A trained student mapping ``[B, 3, S, S]`` (``manifest["view"]``) to class logits ``[B, C]``.

    An embedding student is followed by the head saved beside it (``head.safetensors``/``head.json``).
    """
    from edgedistill import heads as H
    from edgedistill.students import load_student

    model, manifest = load_student(Path(run).expanduser())
    if manifest.get("target") == "embedding":
        model = torch.nn.Sequential(model, H.load_head(Path(run).expanduser()))  # [B, D] -> [B, C]
    return model.to(device).eval(), manifest


def _predict(model: torch.nn.Module, dataset, batch_size: int, num_workers: int, device) -> tuple[Tensor, Tensor, int]:
    """Logits ``[N, C]`` and labels ``[N]`` of a dataset of dict items; unreadable images skipped and counted."""
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from edgedistill.data import collate_skip_bad

    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_bad)
    logits, labels, bad = [], [], 0
    disable = os.environ.get("EDGEDISTILL_NO_PROGRESS", "") not in ("", "0")
    with torch.inference_mode():
        for batch in tqdm(loader, desc="eval", unit="batch", file=sys.stderr, disable=disable):
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
    from edgedistill.data import ImageFolderSource, SplitDataset, SplitPart, ViewSpec, build_splits, eval_transform
    from edgedistill.teachers import resolve_device

    dev = resolve_device(device)
    model, manifest = load_student_classifier(run, dev)
    classes = list(manifest["class_names"])
    transform = eval_transform(ViewSpec(**manifest["view"]))
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
    r.update({"run": str(run), "split": name, "bad": bad, "arch": manifest["arch"]})
    r["png"] = plot_confusion(r["confusion"], classes, out_dir / f"confusion_{name}.png",
                              f"{manifest['arch']} on {name}: {100 * r['acc']:.2f}%").name
    storage.write_json(out_dir / f"eval_{name}.json", r)
    return r


def eval_command(
    run: str | None = None,
    data: DataConfig = DataConfig(),
    teacher: TeacherConfig = TeacherConfig(),
    split: str = "test",
    images: str | None = None,
    head: str = "auto",
    cache_dir: str = "~/.cache/edgedistill",
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
        head: teacher head: auto, text, label_map, linear or all.
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
    results = evaluate_teacher(data, teacher, head=head, split=split, cache_dir=cache_dir, out=out or "runs/teacher",
                               num_workers=num_workers)
    print(format_table(results["table"]))
