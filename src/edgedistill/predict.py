"""Classify images with an exported (ONNX) or checkpointed student: top-k labels with probabilities.

    edgedistill predict --model exports/student/model.onnx --inputs photos/ --top_k 3 --out preds.csv
    edgedistill predict --model exports/student --inputs "*.jpg" --prompts "a fox" "a wolf"

Embedding students (and teachers) can be re-purposed to new classes without retraining by
giving ``--prompts``: the image embedding is compared (cosine, times the logit scale) with the
prompts' text embeddings, stored at export time or, for new prompts, computed once with the
teacher's text encoder when it is available.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from edgedistill import storage
from edgedistill.errors import ConfigError, EdgeDistillError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass
class Classifier:
    """A loaded model ready to score preprocessed batches.

    Attributes:
        view: preprocessing ``{"image_size", "mean", "std", "interpolation"}``.
        labels: names of the C scores.
        score: maps images [B, 3, S, S] float32 to probabilities [B, C].
        source: what was loaded, for messages.
    """

    view: dict
    labels: list[str]
    score: Callable[[np.ndarray], np.ndarray]
    source: str


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _prompt_embeddings(prompts: list[str], stored: dict[str, np.ndarray], meta: dict) -> np.ndarray:
    """Text embeddings [P, D] of ``prompts``: stored ones first, the rest from the teacher's text encoder."""
    missing = [p for p in prompts if p not in stored]
    if missing:
        teacher_cfg = meta.get("teacher")
        if not teacher_cfg:
            known = ", ".join(stored) or "none"
            raise EdgeDistillError(
                f"No text embeddings for prompts {missing} (stored: {known}) and no teacher recorded to embed them; "
                "re-export with --teacher ... --prompts ..."
            )
        import torch

        from edgedistill.export import teacher_config
        from edgedistill.teachers import create_teacher

        try:
            teacher = create_teacher(teacher_config(teacher_cfg))
            with torch.no_grad():
                new = teacher.encode_text(missing).float().cpu().numpy()
        except EdgeDistillError as e:
            raise EdgeDistillError(f"Cannot embed prompts {missing}: the teacher's text encoder is unavailable ({e})") from e
        stored = {**stored, **dict(zip(missing, new))}
    return np.stack([stored[p] for p in prompts]).astype(np.float32)


def _make_scorer(run: Callable[[np.ndarray], dict[str, np.ndarray]], meta: dict, stored: dict[str, np.ndarray],
                 prompts: list[str] | None, source: str) -> tuple[list[str], Callable[[np.ndarray], np.ndarray]]:
    outputs = meta.get("outputs", [])
    if prompts:
        if "embedding" not in outputs:
            raise ConfigError(f"--prompts needs a model with an 'embedding' output; {source!r} has only {outputs}")
        text = _l2n(_prompt_embeddings(list(prompts), stored, meta))  # [P, D]
        scale = float(meta.get("logit_scale") or 100.0)
        return list(prompts), lambda x: _softmax(scale * _l2n(run(x)["embedding"]) @ text.T)
    if "logits" not in outputs:
        raise ConfigError(f"{source!r} outputs only {outputs}: give --prompts (class names) to classify with it")
    names = list(meta.get("class_names") or [])
    return names, lambda x: _softmax(run(x)["logits"].astype(np.float32))


def load_classifier(model: str | os.PathLike, prompts: list[str] | None = None) -> Classifier:
    """Load an exported ONNX model (file or export directory) or a student run directory / checkpoint.

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
        from edgedistill.export import INPUT_NAME, ort_session, read_metadata

        meta = read_metadata(path)  # raises a one-line error for a file that is not an exported model
        sess = ort_session(path)
        names = [o.name for o in sess.get_outputs()]
        run = lambda x: dict(zip(names, sess.run(None, {INPUT_NAME: x})))  # noqa: E731
        stored = {}
        if meta.get("text"):
            emb = np.load(path.parent / meta["text"]["file"])
            stored = dict(zip(meta["text"]["names"], emb))
    elif (path.is_dir() and (path / "student.json").is_file()) or path.suffix == ".safetensors":
        import torch

        from edgedistill.export import head_text_embeddings, load_student_deploy

        deploy, meta = load_student_deploy(path)

        def run(x: np.ndarray) -> dict[str, np.ndarray]:
            with torch.no_grad():
                out = deploy(torch.from_numpy(x))
            out = out if isinstance(out, tuple) else (out,)
            return {n: o.numpy() for n, o in zip(meta["outputs"], out)}

        emb = head_text_embeddings(deploy.head)
        stored = dict(zip(meta["class_names"], emb.numpy())) if emb is not None else {}
    else:
        raise EdgeDistillError(
            f"Not a model: {str(path)!r}. Expected an exported .onnx file, an export directory, "
            "a student run directory (student.json) or student.safetensors"
        )
    labels, score = _make_scorer(run, meta, stored, prompts, str(path))
    return Classifier(view=meta["view"], labels=labels, score=score, source=str(path))


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
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise EdgeDistillError(f"Folder {item!r} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
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


def _load_image(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")  # forces decoding, so truncated files fail here


def predict_images(clf: Classifier, files: list[Path], *, top_k: int = 5, batch_size: int = 32,
                   progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Classify image files in batches; unreadable files are reported, not fatal.

    Returns:
        (predictions ``{"path", "top": [{"label", "probability"}]}``, errors ``{"path", "error"}``).
    """
    from tqdm import tqdm

    from edgedistill.export import preprocess_image

    k = min(top_k, len(clf.labels)) if clf.labels else top_k
    preds, errors = [], []
    disable = not progress or os.environ.get("EDGEDISTILL_NO_PROGRESS") == "1"
    bar = tqdm(total=len(files), desc="predict", unit="img", file=sys.stderr, disable=disable)
    for start in range(0, len(files), batch_size):
        chunk, arrays = [], []
        for f in files[start:start + batch_size]:
            try:
                arrays.append(preprocess_image(_load_image(f), clf.view))
                chunk.append(f)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                errors.append({"path": str(f), "error": f"not a readable image ({type(e).__name__}: {str(e)[:120]})"})
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
            _load_image(f)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise EdgeDistillError(f"Input {str(f)!r} is not a readable image ({type(e).__name__})") from e
    clf = load_classifier(model, prompts)
    preds, errors = predict_images(clf, files, top_k=top_k, batch_size=batch_size, progress=len(files) > batch_size)
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
