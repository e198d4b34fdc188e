"""Benchmark teacher vs student in one run: same runtime, same inputs, latency, throughput, memory.

Each (model, runtime, precision, batch, resolution) is measured in its own child process,
so models never share a heap and the memory figure is the model's own: the child records
its resident set after importing the runtime, resets the kernel's peak counter, loads and
runs the model, and reports ``peak RSS - baseline RSS``. An ONNX Runtime child imports
neither torch nor edgedistill's training code.

    rows = bench_models([student_entry, teacher_entry], batch_sizes=(1, 8), runtimes=("pytorch", "onnxruntime"))
    write_bench(rows, "bench/")   # bench.json, bench.md, bench.png

Runtimes are entries of ``RUNTIMES`` (engine, execution providers, device); the tutorial's
Jetson figures come from ``edgedistill.tutorial`` and are shown as reference only.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from edgedistill import storage, tutorial
from edgedistill.deploy.runtime import ort_session, read_metadata
from edgedistill.errors import ConfigError, EdgeDistillError

@dataclass(frozen=True)
class Runtime:
    """One way to run a model: an engine, its execution providers, and whether it needs CUDA."""

    engine: Literal["pytorch", "onnxruntime", "tensorrt"]
    providers: tuple = ()
    cuda: bool = False


RUNTIMES: dict[str, Runtime] = {
    "pytorch": Runtime("pytorch"),
    "pytorch-cuda": Runtime("pytorch", cuda=True),
    "onnxruntime": Runtime("onnxruntime", ("CPUExecutionProvider",)),
    "onnxruntime-cuda": Runtime("onnxruntime", ("CUDAExecutionProvider", "CPUExecutionProvider"), cuda=True),
    "onnxruntime-tensorrt": Runtime("onnxruntime", (("TensorrtExecutionProvider", {"trt_fp16_enable": True}),
                                                   "CUDAExecutionProvider", "CPUExecutionProvider"), cuda=True),
    "tensorrt": Runtime("tensorrt", cuda=True),
}


@dataclass
class BenchEntry:
    """One model to benchmark.

    Attributes:
        model: its role: ``"teacher"``, ``"tutorial_teacher"`` (the tutorial's ViT-B-32) or ``"student"``.
        arch: architecture name shown in tables.
        onnx: precision (``fp32``/``int8``/``fp16``) -> ONNX file, for the ONNX Runtime runtimes.
        torch: how a child rebuilds the eager model, for the PyTorch runtimes:
            ``{"kind": "student", "path": run_dir}``, ``{"kind": "teacher", "config": TeacherConfig dict}``,
            ``{"kind": "open_clip", "name": "ViT-B-32", "config": optional model config}`` (image tower, random
            init) or ``{"kind": "timm", "arch": "resnet18", "num_classes": 10}``; None: no eager rows.
        resolutions: input sizes to run (e.g. 224 for the tutorial and the native size).
        native_resolution: the size the model is deployed at (rows at it are flagged ``native``).
        engines: precision -> TensorRT engine file, for the ``tensorrt`` runtime.
    """

    model: str
    arch: str
    onnx: dict[str, str] = field(default_factory=dict)
    torch: dict | None = None
    resolutions: tuple[int, ...] = (224,)
    native_resolution: int | None = None
    engines: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- the child process


def _rss_mb(field_name: str) -> float:
    """VmRSS (current) or VmHWM (peak) of this process in MB, from /proc (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource  # non-Linux fallback: peak only (kilobytes on Linux, bytes on macOS)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


def _reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0), so the peak we read
    # later belongs to loading and running the model, not to importing the runtime.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _build_torch(spec: dict):
    if spec["kind"] == "student":
        from edgedistill.deploy.export import load_student_deploy

        return load_student_deploy(spec["path"])[0]
    if spec["kind"] == "teacher":
        from edgedistill.deploy.export import load_teacher_deploy, teacher_config

        return load_teacher_deploy(teacher_config(spec["config"]))[0]
    if spec["kind"] == "open_clip":
        return _open_clip_tower(spec["name"], spec.get("config"))
    if spec["kind"] == "timm":
        import timm

        return timm.create_model(spec["arch"], pretrained=False, num_classes=spec.get("num_classes", 1000))
    raise ConfigError(f"Unknown torch spec kind {spec['kind']!r}. Valid: student, teacher, open_clip, timm")


def _time(run, warmup: int, iters: int, sync=lambda: None) -> list[float]:
    import time

    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        run()
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _measure(job: dict) -> dict:
    """Run one benchmark configuration in this (fresh) process; returns latencies and memory."""
    import numpy as np

    runtime, batch, size = RUNTIMES[job["runtime"]], job["batch"], job["resolution"]
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    if runtime.engine == "onnxruntime":
        import onnxruntime  # noqa: F401 - imported before the baseline so the runtime itself is not counted

        base = _rss_mb("VmRSS")
        _reset_peak_rss()
        sess = ort_session(job["path"], runtime.providers, job["threads"], job["ort_settings"])
        name = sess.get_inputs()[0].name
        times = _time(lambda: sess.run(None, {name: x}), job["warmup"], job["iters"])
        gpu_mb = None
    else:
        import torch

        if job["threads"]:
            torch.set_num_threads(job["threads"])
        cuda = runtime.cuda
        if cuda:
            torch.zeros(1, device="cuda")  # create the CUDA context before the baseline
        if job["torch"] is not None:  # import the model's libraries before the baseline too
            import importlib

            for mod in {"student": ["timm", "edgedistill.deploy.export"], "teacher": ["timm", "open_clip", "edgedistill.deploy.export"],
                        "open_clip": ["open_clip"], "timm": ["timm"]}.get(job["torch"]["kind"], []):
                importlib.import_module(mod)
        base = _rss_mb("VmRSS")
        _reset_peak_rss()
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        if runtime.engine == "tensorrt":
            run = _tensorrt_runner(job["path"], torch.from_numpy(x).cuda())
        else:
            model = _build_torch(job["torch"]).eval()
            xt = torch.from_numpy(x)
            if cuda:
                model, xt = model.cuda(), xt.cuda()

            def run():
                with torch.inference_mode():
                    model(xt)

        times = _time(run, job["warmup"], job["iters"], sync)
        gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    peak = _rss_mb("VmHWM")
    return {"times_ms": times, "peak_mem_mb": max(peak - base, 0.0), "gpu_mem_mb": gpu_mb}


def _tensorrt_runner(engine_path: str, x):
    """A callable running a serialized TensorRT engine (TensorRT >= 10 API) on a CUDA tensor x."""
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    context.set_input_shape(inputs[0], tuple(x.shape))
    buffers = {inputs[0]: x.contiguous()}
    for n in names:
        if n not in buffers:
            buffers[n] = torch.empty(tuple(context.get_tensor_shape(n)), device="cuda", dtype=torch.float32)
    for n, t in buffers.items():
        context.set_tensor_address(n, t.data_ptr())

    def run():
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()

    return run


def _child_main() -> None:
    """Entry point of a benchmark child: job JSON on stdin, result JSON as the last stdout line."""
    job = json.loads(sys.stdin.read())
    print(json.dumps(_measure(job)))


# --------------------------------------------------------------------------- the parent


def _runtime_available(name: str) -> tuple[bool, str]:
    runtime = RUNTIMES[name]
    if runtime.engine == "onnxruntime":
        import onnxruntime as ort

        need = runtime.providers[0] if isinstance(runtime.providers[0], str) else runtime.providers[0][0]
        have = ort.get_available_providers()
        return (need in have, f"ONNX Runtime has no {need} here (available: {', '.join(have)})")
    if runtime.cuda:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible"
    if runtime.engine == "tensorrt":
        from edgedistill.deploy.quantize import tensorrt_status

        return tensorrt_status()
    return True, ""


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
        [sys.executable, "-c", "from edgedistill.deploy.bench import _child_main; _child_main()"],
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
        ok, why = _runtime_available(runtime)
        if not ok:
            log(f"skipping runtime {runtime}: {why}")
            continue
        for entry in entries:
            for precision, path in _variants(entry, runtime, precisions):
                for size in entry.resolutions:
                    for batch in batch_sizes:
                        job = {"runtime": runtime, "arch": entry.arch, "precision": precision, "batch": batch,
                               "resolution": size, "warmup": warmup, "iters": iters, "threads": threads,
                               "path": path, "torch": entry.torch, "ort_settings": ort_settings or {}}
                        res = _run_child(job, timeout)
                        p50 = _percentile(res["times_ms"], 50)
                        row = {
                            "model": entry.model, "arch": entry.arch, "runtime": runtime, "precision": precision,
                            "batch": batch, "resolution": size, "native": size == (entry.native_resolution or size),
                            "throughput_ips": batch * 1000.0 / p50, "latency_ms_p50": p50,
                            "latency_ms_p95": _percentile(res["times_ms"], 95), "peak_mem_mb": res["peak_mem_mb"],
                            "file_mb": Path(path).stat().st_size / 2**20 if path else None,
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
    """(precision, file) pairs an entry can run on a runtime."""
    runtime = RUNTIMES[name]
    if runtime.engine == "pytorch":
        return [("fp32", None)] if entry.torch is not None else []
    files = entry.engines if runtime.engine == "tensorrt" else entry.onnx
    return [(p, files[p]) for p in precisions if p in files and (runtime.cuda or p != "fp16")]


def _row_line(r: dict) -> str:
    return (f"{r['model']:>16} {r['arch']:<18} {r['runtime']:<20} {r['precision']:<5} b={r['batch']:<3} {r['resolution']:>4}px "
            f"{r['throughput_ips']:9.1f} img/s  p50 {r['latency_ms_p50']:8.2f} ms  p95 {r['latency_ms_p95']:8.2f} ms  "
            f"mem {r['peak_mem_mb']:7.1f} MB")


def bench_ratios(rows: list[dict]) -> list[dict]:
    """Student vs teacher ratios for each runtime/precision/batch, at equal resolution and at native resolutions.

    ``speedup`` = student throughput / teacher throughput; ``memory_ratio`` = teacher peak memory /
    student peak memory (both > 1 when the student is better), as in the tutorial's 4.2x / 3.45x.
    """
    out = []
    for s in (r for r in rows if r["model"] == "student"):
        for t in (r for r in rows if r["model"] in ("teacher", "tutorial_teacher")):
            key = ("runtime", "precision", "batch", "setting")  # "setting": extra options a caller tags rows with
            same_setting = all(s.get(k) == t.get(k) for k in key)
            if not same_setting:
                continue
            if s["resolution"] == t["resolution"]:
                kind = "same_resolution"
            elif s["native"] and t["native"]:
                kind = "native_resolution"
            else:
                continue
            out.append({
                "student": s["arch"], "teacher": t["arch"], "teacher_model": t["model"], "runtime": s["runtime"],
                "precision": s["precision"], "batch": s["batch"], "student_resolution": s["resolution"],
                "teacher_resolution": t["resolution"], "comparison": kind, "setting": s.get("setting"),
                "speedup": s["throughput_ips"] / t["throughput_ips"],
                "latency_ratio": t["latency_ms_p50"] / s["latency_ms_p50"],
                "memory_ratio": t["peak_mem_mb"] / max(s["peak_mem_mb"], 1e-6),
            })
    return out


def machine_info() -> dict:
    """Where the numbers were measured."""
    import onnxruntime

    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "onnxruntime": onnxruntime.__version__}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def format_table(rows: list[dict], ratios: list[dict] | None = None) -> str:
    """Markdown tables: measurements, ratios, and the tutorial's Jetson figures (reference)."""
    head = "| model | arch | runtime | precision | batch | res | img/s | p50 ms | p95 ms | peak MB | file MB |\n|" + "---|" * 11
    lines = ["## Measured", "", head]
    for r in rows:
        file_mb = f"{r['file_mb']:.1f}" if r.get("file_mb") else "-"
        runtime = r["runtime"] + (f" ({r['setting']})" if r.get("setting") else "")
        lines.append(f"| {r['model']} | {r['arch']} | {runtime} | {r['precision']} | {r['batch']} | {r['resolution']} | "
                     f"{r['throughput_ips']:.1f} | {r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} | "
                     f"{r['peak_mem_mb']:.1f} | {file_mb} |")
    if ratios:
        lines += ["", "## Student vs teacher (higher is better for the student)", "",
                  "| student | teacher | runtime | precision | batch | res (s/t) | speedup | memory ratio |", "|" + "---|" * 8]
        for q in ratios:
            runtime = q["runtime"] + (f" ({q['setting']})" if q.get("setting") else "")
            lines.append(f"| {q['student']} | {q['teacher']} | {runtime} | {q['precision']} | {q['batch']} | "
                         f"{q['student_resolution']}/{q['teacher_resolution']} | {q['speedup']:.2f}x | {q['memory_ratio']:.2f}x |")
    lines += ["", "## Reference: the tutorial's published Jetson Orin Nano figures (not measured here)", "",
              "| model | arch | runtime | precision | batch | res | img/s | latency ms | memory MB |", "|" + "---|" * 9]
    for r in tutorial.DEPLOY:
        lines.append(f"| {r['model']} | {r['arch']} | {r['runtime']} | {r['precision']} | {r['batch']} | {r['resolution']} | "
                     f"{r['throughput_ips']:.1f} | {r['latency_ms_p50']:.2f} | {r['peak_mem_mb']:.0f} |")
    lines.append(f"\nTutorial ratios: {tutorial.RATIOS['throughput']}x faster, {tutorial.RATIOS['memory']}x less memory.")
    return "\n".join(lines) + "\n"


def plot_bench(rows: list[dict], path: str | os.PathLike) -> None:
    """Bar chart of throughput and peak memory per measurement, the tutorial's Jetson bars hatched beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_rows = list(rows) + tutorial.DEPLOY
    labels = [f"{r['arch']}\n{r['runtime'].replace(' (tutorial, reference)', '*')}\n{r['precision']} b{r['batch']} {r['resolution']}px"
              for r in all_rows]
    colors = ["tab:orange" if r["model"] != "student" else "tab:blue" for r in all_rows]
    hatch = ["//" if r in tutorial.DEPLOY else "" for r in all_rows]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.9 * len(all_rows)), 9), sharex=True)
    for ax, key, title in ((axes[0], "throughput_ips", "throughput (images/s, log)"), (axes[1], "peak_mem_mb", "peak memory (MB)")):
        bars = ax.bar(range(len(all_rows)), [r[key] for r in all_rows], color=colors)
        for bar, h in zip(bars, hatch):
            bar.set_hatch(h)
        ax.set_ylabel(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_xticks(range(len(all_rows)), labels, rotation=90, fontsize=7)
    axes[0].set_title("teacher (orange) vs student (blue); hatched *: tutorial's Jetson Orin Nano figures, reference only")
    fig.tight_layout()
    with storage.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_bench(rows: list[dict], out_dir: str | os.PathLike, *, notes: list[str] | None = None) -> dict:
    """Write ``bench.json`` (rows, ratios, reference figures, machine), ``bench.md`` and ``bench.png``."""
    out_dir = Path(out_dir)
    ratios = bench_ratios(rows)
    report = {"machine": machine_info(), "rows": rows, "ratios": ratios, "reference_tutorial_jetson": tutorial.DEPLOY,
              "reference_tutorial_ratios": tutorial.RATIOS, "notes": notes or []}
    storage.write_json(out_dir / "bench.json", report)
    table = format_table(rows, ratios)
    if notes:
        table += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    storage.write_text(out_dir / "bench.md", table)
    plot_bench(rows, out_dir / "bench.png")
    return report


# --------------------------------------------------------------------------- building entries


def entry_from_export(path: str | os.PathLike, model: str) -> BenchEntry:
    """A :class:`BenchEntry` from an export directory (``export.json``) or a single exported ``.onnx`` file."""
    path = Path(path)
    if path.is_dir():
        if not (path / "export.json").is_file():
            raise EdgeDistillError(f"{str(path)!r} is not an export directory (no export.json); run 'edgedistill export' first")
        files = storage.read_json(path / "export.json")["files"]
        onnx = {p: str(path / f) for p, f in files.items() if p in ("fp32", "int8", "fp16")}
        engines = {p.split("_", 1)[1]: str(path / f) for p, f in files.items() if p.startswith("tensorrt_")}
        meta = read_metadata(onnx["fp32"])
    else:
        meta = read_metadata(path)
        onnx, engines = {meta.precision: str(path)}, {}
    native = meta.view["image_size"]
    torch_spec = None
    if meta.role == "student" and meta.source and Path(meta.source).exists():
        torch_spec = {"kind": "student", "path": meta.source}
    elif meta.role == "teacher" and meta.teacher:
        torch_spec = {"kind": "teacher", "config": meta.teacher}
    resolutions = tuple(sorted({224, native})) if meta.dynamic_hw else (native,)
    return BenchEntry(model=model, arch=meta.arch, onnx=onnx, torch=torch_spec, resolutions=resolutions,
                      native_resolution=native, engines=engines)


def _open_clip_tower(name: str, config: dict | None = None):
    """The image tower of an open_clip model, random-init (speed does not depend on weights)."""
    import open_clip

    from edgedistill.teachers.openclip import register_model_config

    from edgedistill.console import log_at_least

    if config:
        register_model_config(name, config)
    with log_at_least():  # "no pretrained weights loaded": random weights are the point here
        return open_clip.create_model(name, pretrained=None).visual.eval()


def tutorial_teacher_entry(out_dir: str | os.PathLike, name: str = "ViT-B-32", config: dict | None = None) -> BenchEntry:
    """Export a random-init open_clip image tower (the tutorial's teacher, for speed only) and describe it."""
    import open_clip

    from edgedistill.deploy.export import DeployModel, export_onnx
    from edgedistill.deploy.runtime import DeployMeta

    path = Path(out_dir) / f"{name}.onnx"
    tower = _open_clip_tower(name, config)
    size = tower.image_size[0] if isinstance(tower.image_size, (tuple, list)) else tower.image_size
    if not path.is_file():
        meta = DeployMeta(role="teacher", arch=f"{name} (random init)", target="embedding", outputs=["embedding"],
                          view={"image_size": size, "mean": list(open_clip.OPENAI_DATASET_MEAN),
                                "std": list(open_clip.OPENAI_DATASET_STD), "interpolation": "bicubic",
                                "resize_mode": "shortest"})
        export_onnx(DeployModel(tower, None, ("embedding",)), path, meta=meta)
    return BenchEntry(model="tutorial_teacher", arch=name, onnx={"fp32": str(path)},
                      torch={"kind": "open_clip", "name": name, "config": config}, resolutions=(size,), native_resolution=size)


def bench_command(
    student: str,
    teacher: str | None = None,
    tutorial_teacher: bool = True,
    out: str = "bench",
    batch_sizes: list[int] = [1, 8],  # noqa: B006 - jsonargparse needs a literal default to show it
    runtimes: list[str] = ["pytorch", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt"],  # noqa: B006
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
        runtimes: any of pytorch, pytorch-cuda, onnxruntime, onnxruntime-cuda, onnxruntime-tensorrt, tensorrt.
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
    if tutorial_teacher:
        entries.append(tutorial_teacher_entry(out_dir / "exports"))
    notes = []
    for runtime in runtimes:
        ok, why = _runtime_available(runtime) if runtime in RUNTIMES else (True, "")
        if not ok:
            notes.append(f"{runtime} not run: {why}")
    rows = bench_models(entries, batch_sizes=tuple(batch_sizes), warmup=warmup, iters=iters, threads=threads,
                        runtimes=tuple(runtimes), precisions=tuple(precisions))
    if not rows:
        raise EdgeDistillError("No benchmark ran: none of the requested runtimes is available here")
    report = write_bench(rows, out_dir, notes=notes)
    print(format_table(rows, report["ratios"]))
    print(f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.md'}, {out_dir / 'bench.png'}")
