"""One benchmark measurement in a fresh child process: latency of one model on one runtime, and its memory.

The child records its resident set after importing the runtime (``prepare``), resets the kernel's
peak counter, loads and runs the model (``load``), and reports ``peak RSS - baseline RSS``, so the
memory figure is the model's own. An ONNX Runtime or OpenVINO child imports neither torch nor
edgedistill's training code.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from edgedistill.deploy.engines import engine_module, runtime_from_json


def rss_mb(field_name: str) -> float:
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


def reset_peak_rss() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0), so the peak we read
    # later belongs to loading and running the model, not to importing the runtime.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def time_runs(run, warmup: int, iters: int, sync=lambda: None) -> list[float]:
    """Milliseconds of each of ``iters`` timed runs after ``warmup`` untimed ones."""
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


def measure(job: dict) -> dict:
    """Run one benchmark configuration in this (fresh) process; returns latencies and memory."""
    import numpy as np

    runtime = runtime_from_json(job["engine"])  # as the parent had it registered
    engine = engine_module(runtime)
    batch, size = job["batch"], job["resolution"]
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), dtype=np.float32)
    engine.prepare(runtime, job)  # the runtime's own libraries are imported before the baseline
    base = rss_mb("VmRSS")
    reset_peak_rss()
    run, sync = engine.load(runtime, job, x)
    times = time_runs(run, job["warmup"], job["iters"], sync)
    gpu_mb = engine.gpu_mem_mb(runtime) if hasattr(engine, "gpu_mem_mb") else None
    return {"times_ms": times, "peak_mem_mb": max(rss_mb("VmHWM") - base, 0.0), "gpu_mem_mb": gpu_mb}


def child_main() -> None:
    """Entry point of a benchmark child: job JSON on stdin, result JSON as the last stdout line."""
    job = json.loads(sys.stdin.read())
    print(json.dumps(measure(job)))
