"""The model card of a bundle: ``README.md`` in the export directory, written from the run that made it.

Every figure comes from what the run recorded: accuracy from ``export.json`` (the exporter's held-out
accuracy per precision and runtime), speeds and memory from the race's rows (``bench.json``) with the
machine that measured them, provenance from the run's results. A figure the run did not measure is
not shown; the card says how to measure it instead. Torch-free (formatting only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgedistill import storage

# export.json accuracy keys -> (runtime, precision) shown in the card
ACCURACY_ROWS = {"fp32": ("onnxruntime", "FP32"), "int8": ("onnxruntime", "INT8 (static QDQ)"),
                 "openvino_fp32": ("openvino", "FP32"), "openvino_int8": ("openvino", "INT8 (NNCF)"),
                 "executorch_fp32": ("executorch (XNNPACK)", "FP32"),
                 "executorch_int8": ("executorch (XNNPACK)", "INT8 (PT2E)")}


def pct(x: float) -> str:
    """An accuracy (0..1) as the card prints it."""
    return f"{100 * x:.2f}%"


def speed_rows(bench_rows: list[dict], model: str = "student") -> list[dict]:
    """The race's rows of one model, as the card shows them."""
    return [r for r in bench_rows if r["model"] == model]


def render_model_card(export: dict, run: dict | None = None) -> str:
    """The card's markdown.

    Args:
        export: the bundle's ``export.json`` (meta, files, parity, accuracy, accuracy_split).
        run: what the run that made the bundle knows besides: ``teacher`` (description), ``data`` (dataset and
            counts), ``held_out`` (split name), ``bench`` (the race's rows), ``teacher_bench`` (the teacher's rows),
            ``machine``, ``command``; None for a plain ``edgedistill export``.
    """
    run = run or {}
    meta = export["meta"]
    view = meta["view"]
    name = f"{meta['arch']} ({meta['role']})"
    lines = [f"# {name}: an edgedistill bundle", ""]

    lines += ["## What it is", ""]
    lines.append(f"- Architecture: {meta['arch']}; outputs: {', '.join(meta['outputs'])}; learned target: {meta['target']}.")
    if meta.get("class_names"):
        lines.append(f"- Classes ({len(meta['class_names'])}): {', '.join(meta['class_names'])}.")
    teacher = run.get("teacher") or ((meta.get("teacher") or {}).get("kind") and _teacher_words(meta["teacher"]))
    lines.append(f"- Distilled from: {teacher}." if teacher else "- Distilled from: no teacher recorded (trained on labels).")
    data = run.get("data")
    if data:
        counts = data.get("counts") or {}
        shown = ", ".join(f"{k} {v:,}" for k, v in counts.items() if isinstance(v, int))
        lines.append(f"- Data: {data.get('dataset')}" + (f" ({shown} images)" if shown else "") + ".")
    if meta.get("source"):
        lines.append(f"- Exported from: `{meta['source']}`.")
    if run.get("command"):
        lines.append(f"- Made by: `{run['command']}`.")

    lines += ["", "## Accuracy", ""]
    acc = export.get("accuracy") or {}
    split = export.get("accuracy_split") or run.get("held_out")
    if acc:
        lines += [f"Top-1 on the {split or 'held-out'} images, measured by the export on each runtime's own file:", "",
                  "| runtime | precision | accuracy |", "|---|---|---:|"]
        for key, value in acc.items():
            runtime, precision = ACCURACY_ROWS.get(key, (key, ""))
            lines.append(f"| {runtime} | {precision} | {pct(value)} |")
    else:
        lines.append("Not measured by the export (no labeled held-out images were given).")
    parity = export.get("parity") or {}
    if parity:
        lines += ["", "ONNX Runtime matches PyTorch to a max abs difference of "
                  + ", ".join(f"{v:.1e} ({k} inputs)" for k, v in parity.items()) + "."]
    for target, why in (export.get("targets_unavailable") or {}).items():
        lines.append(f"{target} cannot run this model, so the bundle has no {target} file: {why}")
    for target, diffs in (export.get("parity_targets") or {}).items():
        runtime = ACCURACY_ROWS.get(target, (target, ""))[0]
        lines.append(f"{runtime} matches PyTorch to " + ", ".join(f"{v:.1e} ({k} inputs)" for k, v in diffs.items()) + ".")

    lines += ["", "## Speed and memory", ""]
    rows = run.get("bench") or []
    machine = run.get("machine") or {}
    if rows:
        where = machine.get("cpu", "this machine") + (f", {machine['cores']} cores" if machine.get("cores") else "")
        lines += [f"Measured by the run's deployment race on {where}: one child process per row, "
                  "memory = its resident-set growth while loading and running the model.", "",
                  "| runtime | precision | batch | images/s | latency p50 ms | memory MB |", "|---|---|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['runtime']} | {r['precision']} | {r['batch']} | {r['throughput_ips']:.0f} | "
                         f"{r['latency_ms_p50']:.2f} | {r['peak_mem_mb']:.0f} |")
        race = run.get("race")
        if race:
            from edgedistill.deploy.bench_report import race_lines

            lines += [""] + [f"- {line}" for line in race_lines(race)]
    else:
        lines.append("Not measured by the run that made this bundle: `edgedistill bench --student <this folder>` "
                     "measures it on your machine.")

    lines += ["", "## Preprocessing", "",
              f"RGB, {_geometry(view)}, {view['interpolation']} interpolation, scaled to 0..1, then normalised with "
              f"mean {view['mean']} and std {view['std']}; input `image` float32 [batch, 3, {view['image_size']}, "
              f"{view['image_size']}]. EXIF orientation is applied and 16-bit images are scaled to 8 bits first "
              "(`edgedistill.data.images.to_rgb`). The bundle's API and `predict` do all of this.", ""]

    files = export.get("files") or {}
    lines += ["## How to call it", "", "Runtime-only install (no torch): `pip install edgedistill`.", "",
              "```bash", "edgedistill predict <this folder> photo.jpg --top_k 3", "```", "", "```python",
              "from edgedistill.deploy import load_bundle", "",
              "model = load_bundle(\"<this folder>\")" + ("   # precision=\"int8\": model.int8.onnx (faster only where "
                                                           "the race says so)" if "int8" in files else ""),
              "model.classify([\"photo.jpg\", pil_image, numpy_hwc_uint8], top_k=3)   # [[(label, probability), ...], ...]",
              "```"]
    if meta.get("text"):
        lines += ["", f"Stored prompts' text embeddings ({len(meta['text']['names'])}): `--prompts` / "
                  "`load_bundle(..., prompts=[...])` classify by them without the teacher."]

    lines += ["", "## Files", ""]
    for key, fname in files.items():
        lines.append(f"- `{fname}`: {key.replace('_', ' ')}")
        if fname.endswith(".xml"):
            lines.append(f"- `{fname[:-4]}.bin`: its weights")
    if meta.get("text"):
        lines.append(f"- `{meta['text']['file']}`: text embeddings of {len(meta['text']['names'])} prompts")
    if meta.get("class_names"):
        lines.append("- `labels.txt`: the class names, one a line, in the order of the `logits` columns")
    lines.append("- `export.json`: what was exported (`meta`: labels, preprocessing) and checked (parity, accuracy)")
    return "\n".join(lines) + "\n"


def _teacher_words(teacher: dict) -> str:
    parts = [teacher.get("kind"), teacher.get("model"), teacher.get("pretrained")]
    return " ".join(str(p) for p in parts if p)


def _geometry(view: dict) -> str:
    size = view["image_size"]
    if view.get("resize_mode", "squash") == "squash":
        return f"resized to {size} x {size} (squashed)"
    return f"shortest side resized to {size} / {view.get('crop_pct', 1.0)}, centre-cropped to {size} x {size}"


def write_model_card(out_dir: str | os.PathLike, export: dict, run: dict[str, Any] | None = None) -> Path:
    """Write ``<out_dir>/README.md`` (atomically) from the export report and, if given, the run's results."""
    path = Path(out_dir) / "README.md"
    storage.write_text(path, render_model_card(export, run))
    return path
