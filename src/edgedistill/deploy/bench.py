"""Benchmark teacher vs student in one run: same runtime, same inputs, latency, throughput, memory.

Each (model, runtime, precision, batch, resolution) is measured in its own child process
(:mod:`edgedistill.deploy.bench_child`), so models never share a heap and the memory figure is
the model's own. The runtimes are the registry :data:`edgedistill.deploy.engines.RUNTIMES` (one
engine module each: PyTorch, ONNX Runtime, TensorRT, OpenVINO, ExecuTorch); the entries come from
export bundles (:mod:`edgedistill.deploy.bench_entries`); tables, the race's verdict and the plot
are :mod:`edgedistill.deploy.bench_report`.

    rows = bench_models([student_entry, teacher_entry], batch_sizes=(1, 8), runtimes=("onnxruntime", "openvino"))
    write_bench(rows, "bench/")   # bench.json, bench.md, bench.png

The tutorial's Jetson figures come from ``edgedistill.tutorial`` and are shown as reference only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from edgedistill.deploy.bench_entries import BenchEntry, entry_from_export, tutorial_teacher_entry
from edgedistill.deploy.bench_report import (bench_ratios, format_table, machine_info, plot_bench, race_lines,
                                             race_summary, write_bench)
from edgedistill.deploy.engines import RUNTIMES, Runtime, register_runtime, runtime_available, runtime_to_json
from edgedistill.errors import ConfigError, EdgeDistillError

__all__ = ["BenchEntry", "PRECISIONS", "RUNTIMES", "Runtime", "bench_command", "bench_models", "bench_ratios",
           "check_bench_args", "entry_from_export", "format_table", "machine_info", "plot_bench", "race_lines",
           "race_summary", "register_runtime", "tutorial_teacher_entry", "write_bench"]

# Every CPU runtime: `bench` and the race try each and skip, with the reason, those not installed here.
CPU_RUNTIMES = ("onnxruntime", "openvino", "executorch")


def _percentile(values: Sequence[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def _run_child(job: dict, timeout: float) -> dict:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if job["threads"]:
        env["OMP_NUM_THREADS"] = str(job["threads"])
    proc = subprocess.run(
        [sys.executable, "-c", "from edgedistill.deploy.bench_child import child_main; child_main()"],
        input=json.dumps(job), capture_output=True, text=True, env=env, timeout=timeout,
    )
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise EdgeDistillError(f"benchmark of {job['arch']} ({job['runtime']}, {job['precision']}, batch {job['batch']}) failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_models(
    entries: list[BenchEntry],
    *,
    batch_sizes: Sequence[int] = (1, 8),
    warmup: int = 5,
    iters: int = 30,
    threads: int | None = None,
    runtimes: Sequence[str] = ("onnxruntime",),
    precisions: Sequence[str] = ("fp32", "int8", "fp16"),
    ort_settings: dict | None = None,
    timeout: float = 900.0,
    log=print,
) -> list[dict]:
    """Benchmark every entry on every runtime, precision, batch size and resolution, one child each.

    Args:
        entries: the models (teacher, tutorial teacher, student).
        batch_sizes: batch sizes to run.
        warmup: untimed runs first (allocations, kernel selection, caches).
        iters: timed runs; latency percentiles are over these.
        threads: intra-op threads for every runtime; None: each runtime's default (all cores).
        runtimes: any of ``RUNTIMES``; unavailable ones are skipped with the reason logged.
        precisions: ONNX variants to run where an entry has them; ``fp16`` only on GPU runtimes.
        ort_settings: extra ONNX Runtime SessionOptions (e.g. ``{"enable_cpu_mem_arena": False,
            "graph_optimization_level": "ORT_ENABLE_EXTENDED", "config_entries": {...}}``), same for all models.
        timeout: seconds allowed per child.
        log: where progress lines go (``print`` or a no-op).

    Returns:
        One row per measurement: ``{model, arch, runtime, precision, batch, resolution, native,
        throughput_ips, latency_ms_p50, latency_ms_p95, peak_mem_mb, file_mb, gpu_mem_mb, threads}``.
    """
    check_bench_args(runtimes, batch_sizes, warmup, iters, precisions)
    rows: list[dict] = []
    for runtime in runtimes:
        ok, why = runtime_available(runtime)
        if not ok:
            log(f"skipping runtime {runtime}: {why}")
            continue
        for entry in entries:
            for precision, path in _variants(entry, runtime, precisions):
                # An ExecuTorch program is lowered at its deployment size (static height and width).
                sizes = (entry.native_resolution,) if RUNTIMES[runtime].files == "pte" and entry.native_resolution \
                    else entry.resolutions
                for size in sizes:
                    for batch in batch_sizes:
                        job = {"runtime": runtime, "engine": runtime_to_json(RUNTIMES[runtime]), "arch": entry.arch, "precision": precision, "batch": batch,
                               "resolution": size, "warmup": warmup, "iters": iters, "threads": threads,
                               "path": path, "torch": entry.torch, "ort_settings": ort_settings or {}}
                        res = _run_child(job, timeout)
                        p50 = _percentile(res["times_ms"], 50)
                        row = {
                            "model": entry.model, "arch": entry.arch, "runtime": runtime, "precision": precision,
                            "batch": batch, "resolution": size, "native": size == (entry.native_resolution or size),
                            "throughput_ips": batch * 1000.0 / p50, "latency_ms_p50": p50,
                            "latency_ms_p95": _percentile(res["times_ms"], 95), "peak_mem_mb": res["peak_mem_mb"],
                            "file_mb": _file_mb(path),
                            "gpu_mem_mb": res["gpu_mem_mb"], "threads": threads,
                        }
                        rows.append(row)
                        log(_row_line(row))
    return rows


PRECISIONS = ("fp32", "int8", "fp16")


def check_bench_args(runtimes: Sequence[str], batch_sizes: Sequence[int], warmup: int, iters: int,
                     precisions: Sequence[str]) -> None:
    """Refuse unknown runtimes or precisions and non-positive counts, before any work."""
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad:
        raise ConfigError(f"Unknown runtime(s) {bad}. Valid: {', '.join(RUNTIMES)}")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ConfigError(f"Unknown precision(s) {bad}. Valid: {', '.join(PRECISIONS)}")
    if warmup < 0 or iters < 1 or not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ConfigError(f"warmup={warmup}, iters={iters}, batch_sizes={list(batch_sizes)}: need warmup >= 0, "
                          "iters >= 1, batches >= 1")


def _variants(entry: BenchEntry, name: str, precisions: Sequence[str]) -> list[tuple[str, str | None]]:
    """(precision, file) pairs an entry can run on a runtime (FP16 only on GPU runtimes)."""
    runtime = RUNTIMES[name]
    if runtime.files == "torch":
        return [("fp32", None)] if entry.torch is not None else []
    files = entry.files_for(runtime.files)
    return [(p, files[p]) for p in precisions if p in files and (runtime.cuda or p != "fp16")]


def _file_mb(path: str | None) -> float | None:
    """Size of a model file in MB; an OpenVINO IR counts its weights (``.bin``) too."""
    if not path:
        return None
    files = [Path(path)] + ([Path(path).with_suffix(".bin")] if Path(path).suffix == ".xml" else [])
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def _row_line(r: dict) -> str:
    return (f"{r['model']:>16} {r['arch']:<18} {r['runtime']:<20} {r['precision']:<5} b={r['batch']:<3} {r['resolution']:>4}px "
            f"{r['throughput_ips']:9.1f} img/s  p50 {r['latency_ms_p50']:8.2f} ms  p95 {r['latency_ms_p95']:8.2f} ms  "
            f"mem {r['peak_mem_mb']:7.1f} MB")


# --------------------------------------------------------------------------- building entries


def bench_command(
    student: str,
    teacher: str | None = None,
    tutorial_teacher: bool = True,
    out: str = "bench",
    batch_sizes: list[int] = [1, 8],  # noqa: B006 - jsonargparse needs a literal default to show it
    runtimes: list[str] = ["pytorch", "onnxruntime", "openvino", "executorch", "onnxruntime-cuda",  # noqa: B006
                           "onnxruntime-tensorrt", "tensorrt"],
    precisions: list[str] = ["fp32", "int8", "fp16"],  # noqa: B006
    warmup: int = 5,
    iters: int = 30,
    threads: int | None = None,
) -> None:
    """Benchmark a student against its teacher (and the tutorial's ViT-B-32) on the same runtimes and inputs.

    Writes ``<out>/bench.json``, ``bench.md`` and ``bench.png`` and prints the table. Runtimes that
    are not available here (CUDA, TensorRT) are skipped with the reason printed.

    Args:
        student: export directory (from ``edgedistill export``), exported ``.onnx`` file, or a student run
            directory (exported on the fly into ``<out>/exports/student``).
        teacher: the teacher's export directory or ``.onnx`` file; None: no trained teacher.
        tutorial_teacher: also benchmark a random-init OpenCLIP ViT-B-32 image tower (the tutorial's teacher).
        out: output folder.
        batch_sizes: batch sizes.
        runtimes: any of the registry (pytorch, pytorch-cuda, onnxruntime, openvino, executorch, onnxruntime-cuda,
            onnxruntime-tensorrt, tensorrt); those not installed here are skipped with the reason.
        precisions: ONNX variants to include where exported (fp16 only on GPU runtimes).
        warmup: untimed runs before timing.
        iters: timed runs.
        threads: intra-op threads; None: all cores.
    """
    check_bench_args(runtimes, batch_sizes, warmup, iters, precisions)  # before any export
    out_dir = Path(out)
    src = Path(student)
    if src.is_dir() and (src / "student.json").is_file() and not (src / "export.json").is_file():
        from edgedistill.deploy.export import export_model, load_student_deploy

        deploy, meta = load_student_deploy(src)
        src = out_dir / "exports" / "student"
        export_model(deploy, meta, src)
    entries = [entry_from_export(src, "student")]
    if teacher:
        entries.append(entry_from_export(teacher, "teacher"))
    notes = []
    if tutorial_teacher and importlib.util.find_spec("open_clip") is None:  # a runtime-only install
        notes.append("tutorial_teacher not run: it needs open_clip (pip install 'edgedistill[train]')")
    elif tutorial_teacher:
        entries.append(tutorial_teacher_entry(out_dir / "exports"))
    for runtime in runtimes:
        ok, why = runtime_available(runtime) if runtime in RUNTIMES else (True, "")
        if not ok:
            notes.append(f"{runtime} not run: {why}")
    rows = bench_models(entries, batch_sizes=tuple(batch_sizes), warmup=warmup, iters=iters, threads=threads,
                        runtimes=tuple(runtimes), precisions=tuple(precisions))
    if not rows:
        raise EdgeDistillError("No benchmark ran: none of the requested runtimes is available here")
    write_bench(rows, out_dir, notes=notes)
    print((out_dir / "bench.md").read_text())
    written = [out_dir / f for f in ("bench.json", "bench.md", "bench.png") if (out_dir / f).is_file()]
    print("wrote " + ", ".join(map(str, written)))
