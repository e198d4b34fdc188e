"""Classify images with an exported (ONNX) or checkpointed student: top-k labels with probabilities.

    edgedistill predict --model exports/student/model.onnx --inputs photos/ --top_k 3 --out preds.csv
    edgedistill predict --model exports/student --inputs "*.jpg" --prompts "a fox" "a wolf"

Embedding students (and teachers) can be re-purposed to new classes without retraining by
giving ``--prompts``: the image embedding is compared (cosine, times the logit scale) with the
prompts' text embeddings, stored at export time or, for new prompts, computed once with the
teacher's text encoder when it is available.

Predicting from an ONNX file needs only onnxruntime, numpy and Pillow (``deploy.runtime``):
this module imports torch only for a run directory, or to embed prompts that were not stored.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from edgedistill import storage
from edgedistill.console import progress, say
from edgedistill.data.images import BadImageError, decode_image, list_images
from edgedistill.deploy.runtime import Classifier, OnnxModel, make_classifier, preprocess
from edgedistill.errors import ConfigError, EdgeDistillError


def load_classifier(model: str | os.PathLike, prompts: list[str] | None = None) -> Classifier:
    """Load an exported ONNX model (file or export directory) or a student run directory / checkpoint.

    The ONNX path imports neither torch nor timm; a run directory needs them.

    Args:
        model: ``.onnx`` file, export directory (``export.json``), student run directory or ``student.safetensors``.
        prompts: class prompts to re-purpose an embedding model; None: the model's own classes.

    Raises:
        EdgeDistillError: a missing path or a file that is not one of the above.
    """
    path = Path(model)
    if not path.exists():
        raise EdgeDistillError(f"Model {str(path)!r} does not exist")
    if path.is_dir() and (path / "export.json").is_file():
        path = path / "model.onnx"
    if path.suffix == ".onnx":
        onnx = OnnxModel(path)
        return onnx.classifier(prompts, teacher_text_encoder(onnx.meta.teacher) if onnx.meta.teacher else None)
    if (path.is_dir() and (path / "student.json").is_file()) or path.suffix == ".safetensors":
        return _torch_classifier(path, prompts)
    raise EdgeDistillError(
        f"Not a model: {str(path)!r}. Expected an exported .onnx file, an export directory, "
        "a student run directory (student.json) or student.safetensors"
    )


def _torch_classifier(path: Path, prompts: list[str] | None) -> Classifier:
    import torch

    from edgedistill.deploy.export import head_text_embeddings, load_student_deploy

    deploy, meta = load_student_deploy(path)

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = deploy(torch.from_numpy(x))
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.numpy() for n, o in zip(meta.outputs, out)}

    emb = head_text_embeddings(deploy.head)
    stored = dict(zip(meta.class_names, emb.numpy())) if emb is not None else {}
    embed = teacher_text_encoder(meta.teacher) if meta.teacher else None
    return make_classifier(run, meta, stored, prompts, str(path), embed)


def teacher_text_encoder(teacher: dict) -> Callable[[list[str]], np.ndarray]:
    """Embeds prompts with the recorded teacher's text tower; imports torch only when called."""

    def embed(prompts: list[str]) -> np.ndarray:
        try:
            import torch

            from edgedistill.config import TeacherConfig
            from edgedistill.teachers import create_teacher
        except ImportError as e:  # a deploy machine with only onnxruntime, numpy and Pillow
            raise EdgeDistillError(
                f"Cannot embed prompts {prompts}: they are not stored in the exported model, and embedding new prompts "
                f"needs the teacher's text encoder (torch and open_clip; {e}). Re-export with --prompts ...") from None

        names = set(TeacherConfig.__dataclass_fields__)
        try:
            model = create_teacher(TeacherConfig(**{**{k: v for k, v in teacher.items() if k in names}, "runtime": "torch"}))
            with torch.no_grad():
                return model.encode_text(prompts).float().cpu().numpy()
        except EdgeDistillError as e:
            raise EdgeDistillError(f"Cannot embed prompts {prompts}: the teacher's text encoder is unavailable ({e})") from e

    return embed


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def collect_images(inputs: list[str]) -> tuple[list[Path], set[Path]]:
    """Expand files, folders (recursively, image suffixes) and globs into image paths.

    Returns:
        (all image paths in order, the subset named explicitly on the command line).

    Raises:
        EdgeDistillError: a named path that does not exist, a glob or folder with no images.
    """
    files: list[Path] = []
    explicit: set[Path] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            listing = list_images(p)
            for broken in listing.broken_links:
                say(f"skipped {broken}: a broken symbolic link")
            for folder in listing.unreadable:
                say(f"skipped {folder}: the folder cannot be read")
            if not listing.files:
                raise EdgeDistillError(f"Folder {item!r} has no readable images")
            files += listing.files
        elif p.is_file():
            files.append(p)
            explicit.add(p)
        elif _is_glob(item):
            found = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
            if not found:
                raise EdgeDistillError(f"Pattern {item!r} matches no files")
            files += found
        else:
            raise EdgeDistillError(f"Input {item!r} does not exist (expected an image file, a folder or a glob)")
    if not files:
        raise EdgeDistillError("No input images given")
    return files, explicit


def predict_images(clf: Classifier, files: list[Path], *, top_k: int = 5, batch_size: int = 32,
                   show_progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Classify image files in batches; unreadable files are reported, not fatal.

    Returns:
        (predictions ``{"path", "top": [{"label", "probability"}]}``, errors ``{"path", "error"}``).
    """
    k = min(top_k, len(clf.labels)) if clf.labels else top_k
    preds, errors = [], []
    bar = progress(len(files), "predict", disable=not show_progress)
    for start in range(0, len(files), batch_size):
        chunk, arrays = [], []
        for f in files[start:start + batch_size]:
            try:
                arrays.append(preprocess(decode_image(f), clf.view))
                chunk.append(f)
            except BadImageError as e:
                errors.append({"path": str(f), "error": f"not a readable image ({str(e)[:160]})"})
        if arrays:
            probs = clf.score(np.stack(arrays))  # [B, C]
            labels = clf.labels or [f"class_{i}" for i in range(probs.shape[1])]
            for f, p in zip(chunk, probs):
                top = np.argsort(-p)[:k]
                preds.append({"path": str(f), "top": [{"label": labels[i], "probability": float(p[i])} for i in top]})
        bar.update(len(files[start:start + batch_size]))
    bar.close()
    return preds, errors


def write_predictions(preds: list[dict], errors: list[dict], out: str | os.PathLike, model: str) -> None:
    """``.json``: everything; ``.csv``: one row per (image, rank), bad files with their error."""
    out = Path(out)
    if out.suffix == ".json":
        storage.write_json(out, {"model": model, "predictions": preds, "errors": errors})
    elif out.suffix == ".csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "rank", "label", "probability", "error"])
        for p in preds:
            for rank, t in enumerate(p["top"], 1):
                w.writerow([p["path"], rank, t["label"], f"{t['probability']:.6f}", ""])
        for e in errors:
            w.writerow([e["path"], "", "", "", e["error"]])
        storage.write_text(out, buf.getvalue())
    else:
        raise ConfigError(f"--out {str(out)!r}: unknown format {out.suffix!r}. Valid: .csv, .json")


def predict_command(
    model: str,
    inputs: list[str],
    top_k: int = 5,
    prompts: list[str] | None = None,
    out: str | None = None,
    batch_size: int = 32,
) -> None:
    """Classify images, folders or globs with an exported or checkpointed student; print top-k labels.

    Args:
        model: exported ``.onnx`` file, export directory, student run directory or ``student.safetensors``.
        inputs: image files, folders (searched recursively) or glob patterns.
        top_k: labels to show per image.
        prompts: new class names/prompts for an embedding model (re-purpose without retraining).
        out: also write predictions to this ``.csv`` or ``.json`` file.
        batch_size: images per forward pass.
    """
    if top_k < 1 or batch_size < 1:
        raise ConfigError(f"top_k={top_k} and batch_size={batch_size} must be >= 1")
    if out is not None and Path(out).suffix not in (".csv", ".json"):
        raise ConfigError(f"--out {out!r}: unknown format {Path(out).suffix!r}. Valid: .csv, .json")
    files, explicit = collect_images(inputs)
    for f in explicit:  # a file named on the command line must be an image: fail before loading the model
        try:
            decode_image(f)
        except BadImageError as e:
            raise EdgeDistillError(f"Input {str(f)!r} is not a readable image ({str(e).split(': ', 2)[-1][:120]})") from None
    clf = load_classifier(model, prompts)
    preds, errors = predict_images(clf, files, top_k=top_k, batch_size=batch_size, show_progress=len(files) > batch_size)
    for p in preds:
        print(p["path"] + ": " + ", ".join(f"{t['label']} {t['probability']:.3f}" for t in p["top"]))
    for e in errors:
        print(f"skipped {e['path']}: {e['error']}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} of {len(files)} files could not be read", file=sys.stderr)
    if out is not None:
        write_predictions(preds, errors, out, str(model))
    if not preds:
        raise EdgeDistillError(f"None of the {len(files)} input files could be classified")
